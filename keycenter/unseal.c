/* unseal.c - the sealed Key Center (production mode, keycenter.hsm.unseal =
 * shares): nothing on disk opens the token, so the daemon starts without
 * the HSM and without the audit MAC key (which the token seals), answers
 * 503 "sealed" to every key operation, and collects officers' shares until
 * the threshold is reached; then it derives the token PIN, logs in, checks
 * the root key's unwrap template, unseals the audit MAC key and starts the
 * audit writer.
 *
 * Audit while sealed: there is no MAC key, so the chain cannot grow. Every
 * request answered while sealed (unseal attempts included) is written to
 * the JSON log at once and kept in an in-memory journal (at most
 * JOURNAL_MAX records; beyond that they are counted); on unseal the journal
 * goes into the chain, in order and with the original times, ahead of the
 * record of the unseal itself and of any request answered after it. Failed
 * unseal attempts also raise an "unseal_failure" alert, which is stored in
 * keycenter.alert at once. A restart while sealed loses the journal (the log
 * and the alerts keep it); docs/decisions.md explains why this is the
 * choice. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "crypto.h"
#include "keycenter/keycenter.h"
#include "keycenter/shares.h"
#include "log.h"

#define JOURNAL_MAX 4096

struct journal_entry {
	int64_t ts_us;
	char principal[128];
	char client[64];
	char op[48];
	char key[KC_NAME_MAX + 1];
	char result[48];
};

struct kc_unseal {
	pthread_mutex_t lock; /* the shares, and the unseal itself */
	struct kc_share shares[KC_SHARES_MAX];
	char officers[KC_SHARES_MAX][128];
	unsigned n;
	pthread_mutex_t journal_lock; /* the journal, and the sealed -> unsealed flip */
	struct journal_entry *journal;
	size_t jn;
	uint64_t dropped;
};

int kc_unseal_init(kc_service *s, int sealed)
{
	struct kc_unseal *u = calloc(1, sizeof(*u));
	if (!u)
		return MICA_ENOMEM;
	pthread_mutex_init(&u->lock, NULL);
	pthread_mutex_init(&u->journal_lock, NULL);
	s->unseal = u;
	atomic_store(&s->sealed, sealed ? 1 : 0);
	return 0;
}

void kc_unseal_cleanup(kc_service *s)
{
	struct kc_unseal *u = s->unseal;
	if (!u)
		return;
	mica_wipe(u->shares, sizeof(u->shares));
	free(u->journal);
	pthread_mutex_destroy(&u->journal_lock);
	pthread_mutex_destroy(&u->lock);
	free(u);
	s->unseal = NULL;
}

int kc_service_sealed(const kc_service *s)
{
	return atomic_load_explicit(&((kc_service *)s)->sealed, memory_order_acquire);
}

static void copy_str(char *dst, size_t cap, const char *src)
{
	snprintf(dst, cap, "%s", src ? src : "");
}

int kc_sealed_record(kc_service *s, const kc_audit_record *rec)
{
	struct kc_unseal *u = s->unseal;
	int rc = 0;

	if (!u)
		return MICA_ESTATE;
	pthread_mutex_lock(&u->journal_lock);
	if (!kc_service_sealed(s)) {
		rc = MICA_ESTATE;
	} else {
		MICA_LOG(MICA_LOG_INFO, "keycenter: sealed: %s by %s from %s: %s", rec->op,
			 rec->principal ? rec->principal : "-", rec->client ? rec->client : "-",
			 rec->result);
		if (!u->journal)
			u->journal = calloc(JOURNAL_MAX, sizeof(*u->journal));
		if (!u->journal || u->jn == JOURNAL_MAX) {
			u->dropped++;
		} else {
			struct journal_entry *e = &u->journal[u->jn++];
			e->ts_us = rec->ts_us ? rec->ts_us : mica_clock_now_us();
			copy_str(e->principal, sizeof(e->principal), rec->principal);
			copy_str(e->client, sizeof(e->client), rec->client);
			copy_str(e->op, sizeof(e->op), rec->op);
			copy_str(e->key, sizeof(e->key), rec->key_name);
			copy_str(e->result, sizeof(e->result), rec->result);
		}
	}
	pthread_mutex_unlock(&u->journal_lock);
	return rc;
}

/* An unseal attempt: journaled (we are sealed), and alerted if it failed. */
static void attempt_record(kc_service *s, const char *principal, const char *client,
			   const char *result, int failed, unsigned index)
{
	kc_audit_record rec = {.ts_us = mica_clock_now_us(),
			       .principal = principal,
			       .client = client && *client ? client : "-",
			       .op = "unseal",
			       .result = result};
	/* Called under u->lock while sealed, so it is journaled. */
	if (kc_sealed_record(s, &rec) != 0)
		MICA_LOG(MICA_LOG_ERROR, "keycenter: unseal attempt by %s not journaled",
			 principal);
	if (failed)
		kc_alert(s, "unseal_failure", principal, NULL,
			 json_pack("{s:s,s:i}", "reason", result, "share_index", (int)index));
}

struct flush_state {
	pthread_mutex_t lock;
	unsigned failed;
};

static void on_flushed(void *arg, int rc, uint64_t seq)
{
	struct flush_state *f = arg;
	(void)seq;
	if (rc) {
		pthread_mutex_lock(&f->lock);
		f->failed++;
		pthread_mutex_unlock(&f->lock);
	}
}

/* Puts the journal into the chain, then the record of the unseal, and flips
 * the service to unsealed, all under the journal lock so that no request
 * answered while sealed is missed. Returns 0 or the error of the final
 * record (the service stays sealed then). */
static int flush_and_open(kc_service *s, const char *principal, const char *client)
{
	struct kc_unseal *u = s->unseal;
	struct flush_state f = {.lock = PTHREAD_MUTEX_INITIALIZER};
	char dropped[48];
	int rc;

	pthread_mutex_lock(&u->journal_lock);
	for (size_t i = 0; i < u->jn; i++) {
		struct journal_entry *e = &u->journal[i];
		kc_audit_record rec = {.ts_us = e->ts_us,
				       .principal = e->principal,
				       .client = e->client,
				       .op = e->op,
				       .key_name = e->key[0] ? e->key : NULL,
				       .result = e->result};
		if (kc_audit_submit(s->audit, &rec, on_flushed, &f) != 0)
			f.failed++;
	}
	if (u->dropped) {
		snprintf(dropped, sizeof(dropped), "dropped_%llu", (unsigned long long)u->dropped);
		kc_audit_record rec = {.ts_us = mica_clock_now_us(),
				       .principal = "-",
				       .client = "-",
				       .op = "sealed_journal",
				       .result = dropped};
		if (kc_audit_submit(s->audit, &rec, on_flushed, &f) != 0)
			f.failed++;
	}
	/* One writer, one queue: once this commits, everything above has. */
	kc_audit_record done = {.ts_us = mica_clock_now_us(),
				.principal = principal,
				.client = client && *client ? client : "-",
				.op = "unseal",
				.result = "unsealed"};
	rc = kc_audit_append(s->audit, &done, NULL);
	pthread_mutex_lock(&f.lock);
	unsigned failed = f.failed;
	pthread_mutex_unlock(&f.lock);
	if (rc == 0) {
		if (failed)
			MICA_LOG(MICA_LOG_ERROR,
				 "keycenter: %u records of the sealed period could "
				 "not be written to the audit chain",
				 failed);
		MICA_LOG(MICA_LOG_INFO,
			 "keycenter: unsealed by %s (%zu sealed-period records "
			 "written to the audit chain)",
			 principal, u->jn);
		u->jn = 0;
		u->dropped = 0;
		atomic_store_explicit(&s->sealed, 0, memory_order_release);
	}
	pthread_mutex_unlock(&u->journal_lock);
	return rc;
}

/* Threshold reached: combine, derive the PIN, open the token, bring the
 * service up. Fills |out| with the outcome. */
static void open_with_shares(kc_service *s, const char *principal, const char *client,
			     struct kc_unseal_reply *out)
{
	struct kc_unseal *u = s->unseal;
	uint8_t secret[KC_SHARE_SECRET_LEN];
	char user_pin[KC_SHARE_PIN_LEN + 1], so_pin[KC_SHARE_PIN_LEN + 1];
	kc_hsm *h = NULL;
	int64_t t0 = mica_clock_ms();
	int rc;

	rc = kc_shares_combine(u->shares, u->n, secret);
	if (rc == 0)
		rc = kc_shares_pins(secret, user_pin, so_pin);
	mica_wipe(secret, sizeof(secret));
	mica_wipe(so_pin, sizeof(so_pin));
	if (rc) {
		out->status = 400;
		out->why.code = "shares_do_not_combine";
		snprintf(out->why.msg, sizeof(out->why.msg),
			 "the %u shares do not combine to this Key Center's secret; submit them "
			 "again",
			 u->n);
		goto out;
	}
	rc = kc_hsm_open_pin(&h, s->cfg->hsm_module, s->cfg->hsm_token_label, user_pin,
			     KC_SHARE_PIN_LEN);
	mica_wipe(user_pin, sizeof(user_pin));
	if (rc) {
		out->status = rc == MICA_EPIN ? 400 : 503;
		out->why.code = rc == MICA_EPIN ? "unseal_failed" : "hsm_unavailable";
		snprintf(out->why.msg, sizeof(out->why.msg), "%s",
			 rc == MICA_EPIN ? "the token refused the PIN these shares give: shares of "
					   "another Key Center?"
					 : "the HSM cannot be opened; see the Key Center's log");
		goto out;
	}
	rc = kc_service_bring_up(s, h);
	if (rc) {
		out->status = 503;
		out->why.code = "unseal_failed";
		snprintf(out->why.msg, sizeof(out->why.msg),
			 "the token opened but the Key Center cannot start on it (%s); see its log",
			 mica_strerror(rc));
		goto out;
	}
	rc = flush_and_open(s, principal, client);
	if (rc) {
		out->status = 503;
		out->why.code = "audit_unavailable";
		snprintf(out->why.msg, sizeof(out->why.msg),
			 "the unseal could not be audited, so the Key Center stays sealed");
		kc_service_bring_down(s);
		goto out;
	}
	out->status = 200;
	out->why.code = NULL;
	out->body = json_pack("{s:b,s:i,s:i,s:I}", "sealed", 0, "progress", 0, "threshold",
			      (int)u->shares[0].threshold, "unseal_ms",
			      (json_int_t)(mica_clock_ms() - t0));
out:
	/* Whatever happened, a new round starts from no shares. */
	mica_wipe(u->shares, sizeof(u->shares));
	memset(u->officers, 0, sizeof(u->officers));
	u->n = 0;
}

int kc_unseal_submit(kc_service *s, const char *principal, const char *client,
		     const char *share_text, struct kc_unseal_reply *out)
{
	struct kc_unseal *u = s->unseal;
	struct kc_share sh;
	kc_policy *policy;
	int rc, role;

	memset(out, 0, sizeof(*out));
	if (!u)
		return MICA_ESTATE;
	pthread_mutex_lock(&u->lock);
	if (!kc_service_sealed(s)) {
		pthread_mutex_unlock(&u->lock);
		return MICA_ESTATE;
	}
	policy = kc_policy_current(s);
	role = policy ? (int)kc_policy_role(policy, principal) : -1;
	kc_policy_unref(policy);
	if (role != KC_ROLE_SECURITY_OFFICER) {
		out->status = role < 0 ? 503 : 403;
		out->why.code = role < 0 ? "no_policy" : "not_an_officer";
		snprintf(out->why.msg, sizeof(out->why.msg), "%s",
			 role < 0 ? "the key center has no active policy"
				  : "only security officers may submit unseal shares");
		attempt_record(s, principal, client, out->why.code, 1, 0);
		goto out;
	}
	rc = share_text ? kc_share_parse(share_text, &sh) : MICA_EBADENCODING;
	if (rc) {
		out->status = 400;
		out->why.code = rc == MICA_ECHECKSUM ? "share_checksum_mismatch" : "bad_share";
		if (rc == MICA_ECHECKSUM)
			snprintf(out->why.msg, sizeof(out->why.msg),
				 "the share submitted by %s fails its checksum: it was mistyped; "
				 "nothing was combined",
				 principal);
		else
			snprintf(out->why.msg, sizeof(out->why.msg),
				 "share must be one mks1-... line as `mica keycenter init` printed "
				 "it (%s)",
				 mica_strerror(rc));
		attempt_record(s, principal, client, out->why.code, 1, 0);
		goto out;
	}
	if (u->n > 0 && (memcmp(sh.set_id, u->shares[0].set_id, KC_SHARE_SET_ID_LEN) != 0 ||
			 sh.threshold != u->shares[0].threshold)) {
		out->status = 400;
		out->why.code = "share_from_other_set";
		snprintf(out->why.msg, sizeof(out->why.msg),
			 "share %u belongs to another ceremony than the %u share(s) submitted so "
			 "far",
			 sh.index, u->n);
		attempt_record(s, principal, client, out->why.code, 1, sh.index);
		goto out;
	}
	for (unsigned i = 0; i < u->n; i++) {
		if (strcmp(u->officers[i], principal) == 0 || u->shares[i].index == sh.index) {
			out->status = 409;
			out->why.code = "share_already_submitted";
			snprintf(
				out->why.msg, sizeof(out->why.msg), "%s",
				strcmp(u->officers[i], principal) == 0
					? "this officer has already submitted a share in this round"
					: "a share with this index was already submitted");
			attempt_record(s, principal, client, out->why.code, 1, sh.index);
			goto out;
		}
	}
	u->shares[u->n] = sh;
	copy_str(u->officers[u->n], sizeof(u->officers[0]), principal);
	u->n++;
	attempt_record(s, principal, client, "share_accepted", 0, sh.index);
	if (u->n < sh.threshold) {
		out->status = 202;
		out->body = json_pack("{s:b,s:i,s:i}", "sealed", 1, "progress", (int)u->n,
				      "threshold", (int)sh.threshold);
		goto out;
	}
	open_with_shares(s, principal, client, out);
	if (out->why.code)
		attempt_record(s, principal, client, out->why.code, 1, sh.index);
out:
	mica_wipe(&sh, sizeof(sh));
	pthread_mutex_unlock(&u->lock);
	return 0;
}

json_t *kc_seal_status(kc_service *s)
{
	struct kc_unseal *u = s->unseal;
	int sealed = kc_service_sealed(s);
	unsigned n = 0, k = 0;

	if (u && sealed) {
		pthread_mutex_lock(&u->lock);
		n = u->n;
		k = n ? u->shares[0].threshold : 0;
		pthread_mutex_unlock(&u->lock);
	}
	return json_pack("{s:b,s:i,s:i,s:s}", "sealed", sealed, "progress", (int)n, "threshold",
			 (int)k, "unseal", s->cfg && s->cfg->hsm_unseal ? s->cfg->hsm_unseal : "");
}
