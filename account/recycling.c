/* recycling.c - the carriers' number-recycling check: was a phone number
 * given to a new subscriber on or after a date? The account service asks it
 * before a number another account bound moves to its new registrant, and
 * before a reset code goes to a number (docs/api/account.md, "Recycled phone
 * numbers"). Two answers, chosen by account.recycling.mode:
 *   local  the stand-in: rows (blind index of the number, date) in
 *          account.recycled_number, written by the operator or by tests
 *   http   a carrier's endpoint at account.recycling.url, over TLS with the
 *          service's client certificate:
 *            POST {"phone": "+8613800000001", "since": "2026-01-31"}
 *            200 {"recycled": true|false}
 *          anything else (another status, a missing or non-boolean member,
 *          no answer in 5 s) is an error, and the callers fail closed: the
 *          number stays where it is and the request answers 5xx.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "httpc.h"
#include "log.h"

struct acct_recycling {
	pthread_mutex_t mu; /* one handle: registrations and resets are rare */
	mica_httpc *h;
	char *url;
};

int acct_recycling_new(const struct acct_config *cfg, acct_recycling **out)
{
	*out = NULL;
	if (strcmp(cfg->recycling_mode, "local") == 0)
		return 0;
	if (strcmp(cfg->recycling_mode, "http") != 0) {
		MICA_LOG(MICA_LOG_ERROR, "account.recycling.mode: must be local or http");
		return MICA_ECONFIG;
	}
	if (strncmp(cfg->recycling_url, "https://", 8) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "account.recycling.url: mode http needs an https:// URL");
		return MICA_ECONFIG;
	}
	acct_recycling *r = calloc(1, sizeof(*r));
	mica_httpc_options o = {.ca_file = cfg->kc.ca_file,
				.cert_file = cfg->kc.cert_file,
				.key_file = cfg->kc.key_file,
				.timeout_ms = 5000};
	int err = r && (r->url = strdup(cfg->recycling_url)) ? mica_httpc_new(&r->h, &o)
							     : MICA_ENOMEM;
	if (err) {
		if (r)
			free(r->url);
		free(r);
		return err;
	}
	pthread_mutex_init(&r->mu, NULL);
	*out = r;
	return 0;
}

void acct_recycling_free(acct_recycling *r)
{
	if (!r)
		return;
	mica_httpc_free(r->h);
	pthread_mutex_destroy(&r->mu);
	free(r->url);
	free(r);
}

static int ask_carrier(acct_recycling *r, const char *phone, const char *since, int *recycled)
{
	json_t *req = json_pack("{s:s,s:s}", "phone", phone, "since", since), *reply = NULL;
	long status = 0;
	int err;
	if (!req)
		return MICA_ENOMEM;
	pthread_mutex_lock(&r->mu);
	/* A question, not an action: safe to retry. */
	err = mica_httpc_json(r->h, "POST", r->url, req, 1, &status, &reply);
	pthread_mutex_unlock(&r->mu);
	json_decref(req);
	json_t *v = json_object_get(reply, "recycled");
	if (!err && (status != 200 || !json_is_boolean(v))) {
		MICA_LOG(MICA_LOG_WARN, "account: the number-recycling check answered HTTP %ld%s",
			 status, status == 200 ? " without a boolean \"recycled\"" : "");
		err = MICA_EHTTP;
	}
	if (!err)
		*recycled = json_is_true(v);
	json_decref(reply);
	return err;
}

int acct_number_recycled(acct_service *s, mica_db *db, const char *phone, const char *phone_idx,
			 const char *since, int *recycled)
{
	PGresult *res = NULL;
	int err;
	*recycled = 0;
	if (!since || strlen(since) != 10)
		return MICA_EINVAL;
	if (s->recycling)
		return ask_carrier(s->recycling, phone, since, recycled);
	if (!db)
		return MICA_EDBCONN;
	const char *p[2] = {phone_idx, since};
	err = mica_db_exec(db,
			   "SELECT 1 FROM account.recycled_number WHERE phone_idx = $1"
			   " AND recycled_on >= $2::date LIMIT 1",
			   2, p, &res);
	*recycled = err == 0 && PQntuples(res) > 0;
	PQclear(res);
	return err;
}

int acct_is_iso_day(const char *s)
{
	for (int i = 0; i < 10; i++)
		if (i == 4 || i == 7 ? s[i] != '-' : s[i] < '0' || s[i] > '9')
			return 0;
	return s[10] == '\0';
}

static int is_blank(char c)
{
	return c == ' ' || c == '\t';
}

int acct_recycled_line(const char *line, size_t len, char *phone, size_t phone_cap, char *day,
		       const char **why)
{
	char field[2][24];
	size_t i = 0;

	*why = NULL;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (memchr(line, '\0', len))
		return *why = "a NUL byte", -1;
	while (i < len && is_blank(line[i]))
		i++;
	if (i == len || line[i] == '#')
		return 0;
	for (int f = 0; f < 2; f++) {
		size_t start = i, end;
		while (i < len && line[i] != ',')
			i++;
		end = i;
		while (end > start && is_blank(line[end - 1]))
			end--;
		if (end - start >= sizeof(field[f]))
			return *why = f ? "the day is not YYYY-MM-DD"
					: "the number is not + and 7 to 15 digits",
			       -1;
		memcpy(field[f], line + start, end - start);
		field[f][end - start] = '\0';
		if (f == 0) {
			if (i == len)
				return *why = "expected +E164,YYYY-MM-DD", -1;
			i++; /* the comma */
			while (i < len && is_blank(line[i]))
				i++;
		}
	}
	if (i != len)
		return *why = "more than two fields", -1;
	if (acct_ident_parse(field[0], phone, phone_cap) != ACCT_ID_PHONE)
		return *why = "the number is not + and 7 to 15 digits", -1;
	if (!acct_is_iso_day(field[1]))
		return *why = "the day is not YYYY-MM-DD", -1;
	memcpy(day, field[1], 11);
	return 1;
}
