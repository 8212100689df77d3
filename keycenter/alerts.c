/* alerts.c - real-time alerts on abnormal access. kc_alert() queues an
 * alert without blocking the request; a dedicated thread logs it, inserts it
 * into keycenter.alert and POSTs it to the optional webhook (mTLS via
 * libmica's httpc when a CA is configured). The queue is bounded; when it is
 * full the alert is still logged, and the drop is counted in the next one. */
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "httpc.h"
#include "keycenter/keycenter.h"
#include "log.h"

#define QUEUE_MAX 4096

struct alert {
	struct alert *next;
	char *kind, *principal, *key;
	json_t *detail;
};

struct kc_alerts {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct alert *head, *tail;
	int queued, stopping;
	unsigned long dropped;
	mica_httpc *webhook;
};

static void alert_free(struct alert *a)
{
	free(a->kind);
	free(a->principal);
	free(a->key);
	json_decref(a->detail);
	free(a);
}

static void deliver(kc_service *s, struct alert *a)
{
	mica_db *db = mica_db_thread();
	char *detail = json_dumps(a->detail, JSON_COMPACT);
	const char *p[4] = {a->kind, a->principal, a->key, detail ? detail : "{}"};
	int err = db ? mica_db_exec(db,
				    "INSERT INTO keycenter.alert (kind, principal, key_name, detail)"
				    " VALUES ($1, $2, $3, $4::jsonb)",
				    4, p, NULL)
		     : MICA_EDBCONN;
	if (err)
		MICA_LOG(MICA_LOG_ERROR, "keycenter: alert %s could not be stored: %s", a->kind,
			 mica_strerror(err));
	if (s->alerts->webhook) {
		json_t *body = json_pack("{s:s,s:s?,s:s?,s:O}", "kind", a->kind, "principal",
					 a->principal, "key", a->key, "detail", a->detail);
		long status = 0;
		json_t *reply = NULL;
		err = mica_httpc_json(s->alerts->webhook, "POST", s->cfg->alert_webhook_url, body, 1,
				      &status, &reply);
		if (err || status >= 300)
			MICA_LOG(MICA_LOG_ERROR, "keycenter: alert webhook failed: %s (status %ld)",
				 mica_strerror(err), status);
		json_decref(body);
		json_decref(reply);
	}
	free(detail);
}

static void *alert_thread(void *arg)
{
	kc_service *s = arg;
	struct kc_alerts *q = s->alerts;
	pthread_mutex_lock(&q->lock);
	for (;;) {
		while (!q->head && !q->stopping)
			pthread_cond_wait(&q->cond, &q->lock);
		if (!q->head)
			break;
		struct alert *a = q->head;
		q->head = a->next;
		if (!q->head)
			q->tail = NULL;
		q->queued--;
		pthread_mutex_unlock(&q->lock);
		deliver(s, a);
		alert_free(a);
		pthread_mutex_lock(&q->lock);
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

int kc_alerts_start(kc_service *s)
{
	struct kc_alerts *q = calloc(1, sizeof(*q));
	int err;
	if (!q)
		return MICA_ENOMEM;
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->cond, NULL);
	if (s->cfg->alert_webhook_url && *s->cfg->alert_webhook_url) {
		mica_httpc_options o = {.ca_file = s->cfg->alert_webhook_ca_file,
					.cert_file = s->cfg->http.cert_file,
					.key_file = s->cfg->http.key_file,
					.timeout_ms = 5000,
					.retries = 2};
		if ((err = mica_httpc_new(&q->webhook, &o)) != 0) {
			free(q);
			return err;
		}
	}
	s->alerts = q;
	if (pthread_create(&q->thread, NULL, alert_thread, s) != 0) {
		mica_httpc_free(q->webhook);
		free(q);
		s->alerts = NULL;
		return MICA_ENOMEM;
	}
	return 0;
}

void kc_alerts_stop(kc_service *s)
{
	struct kc_alerts *q = s->alerts;
	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->stopping = 1;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
	pthread_join(q->thread, NULL); /* delivers what is queued first */
	mica_httpc_free(q->webhook);
	free(q);
	s->alerts = NULL;
}

static char *dup_or_null(const char *v)
{
	return v ? strdup(v) : NULL;
}

void kc_alert(kc_service *s, const char *kind, const char *principal, const char *key,
	      json_t *detail)
{
	struct kc_alerts *q = s->alerts;
	struct alert *a;

	if (!detail)
		detail = json_object();
	MICA_LOG(MICA_LOG_WARN, "keycenter alert: %s principal=%s key=%s", kind,
		 principal ? principal : "-", key ? key : "-");
	if (!q || !(a = calloc(1, sizeof(*a)))) {
		json_decref(detail);
		return;
	}
	a->kind = strdup(kind);
	a->principal = dup_or_null(principal);
	a->key = dup_or_null(key);
	a->detail = detail;
	pthread_mutex_lock(&q->lock);
	if (q->queued >= QUEUE_MAX || !a->kind) {
		q->dropped++;
		pthread_mutex_unlock(&q->lock);
		alert_free(a);
		return;
	}
	if (q->dropped) {
		json_object_set_new(a->detail, "dropped_before", json_integer((json_int_t)q->dropped));
		q->dropped = 0;
	}
	if (q->tail)
		q->tail->next = a;
	else
		q->head = a;
	q->tail = a;
	q->queued++;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
}

int kc_alerts_list(kc_service *s, int64_t after_id, int limit, json_t **out)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char a[24], l[16];
	json_t *list;
	int err;
	(void)s;

	*out = NULL;
	if (!db)
		return MICA_EDBCONN;
	snprintf(a, sizeof(a), "%lld", (long long)after_id);
	snprintf(l, sizeof(l), "%d", limit);
	const char *p[2] = {a, l};
	err = mica_db_exec(db,
			   "SELECT id, ts::text, kind, principal, key_name, detail::text"
			   " FROM keycenter.alert WHERE id > $1 ORDER BY id LIMIT $2",
			   2, p, &res);
	if (err)
		return err;
	list = json_array();
	for (int r = 0; r < PQntuples(res); r++) {
		int64_t id = 0;
		if (mica_db_get_int64(res, r, 0, &id) != 0)
			continue;
		json_array_append_new(
			list, json_pack("{s:I,s:s,s:s,s:s?,s:s?,s:o}", "id", (json_int_t)id, "ts",
					mica_db_get(res, r, 1), "kind", mica_db_get(res, r, 2),
					"principal", mica_db_get(res, r, 3), "key",
					mica_db_get(res, r, 4), "detail",
					json_loads(mica_db_get(res, r, 5), 0, NULL)));
	}
	PQclear(res);
	*out = json_pack("{s:o}", "alerts", list);
	return 0;
}
