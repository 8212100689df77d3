/* alerts.c - real-time alerts on abnormal access. kc_alert() queues an
 * alert without blocking the request; a dedicated thread logs it, inserts it
 * into keycenter.alert and POSTs it to the optional webhook (mTLS via
 * libmica's httpc when a CA is configured). The queue is bounded; when it is
 * full the alert is still logged, and the drop is counted in the next one.
 * The same thread POSTs signed audit checkpoints to the publish webhook, and
 * a second thread runs the periodic audit MAC self-check. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "crypto.h"

#include "db.h"
#include "httpc.h"
#include "keycenter/keycenter.h"
#include "log.h"

#define QUEUE_MAX 4096

struct alert {
	struct alert *next;
	char *kind, *principal, *key; /* kind NULL: a checkpoint to publish */
	json_t *detail;		      /* the alert, or the checkpoint line */
};

struct kc_alerts {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct alert *head, *tail;
	int queued, stopping;
	unsigned long dropped;
	mica_httpc *webhook;
	mica_httpc *publish; /* keycenter.audit.publish_webhook_url */
	pthread_t selfcheck; /* when has_selfcheck */
	int has_selfcheck;
	pthread_cond_t check_cond; /* wakes the self-check thread to stop */
};

static void alert_free(struct alert *a)
{
	free(a->kind);
	free(a->principal);
	free(a->key);
	json_decref(a->detail);
	free(a);
}

/* POSTs a checkpoint line to the publish webhook. */
static void deliver_checkpoint(kc_service *s, struct alert *a)
{
	long status = 0;
	json_t *reply = NULL;
	int err = mica_httpc_json(s->alerts->publish, "POST", s->cfg->audit_publish_webhook_url,
				  a->detail, 1, &status, &reply);
	if (err || status >= 300)
		MICA_LOG(MICA_LOG_ERROR,
			 "keycenter: publishing the audit checkpoint at seq %" JSON_INTEGER_FORMAT
			 " to the webhook failed: %s (status %ld)",
			 json_integer_value(json_object_get(a->detail, "seq")), mica_strerror(err),
			 status);
	json_decref(reply);
}

static void deliver(kc_service *s, struct alert *a)
{
	if (!a->kind) {
		deliver_checkpoint(s, a);
		return;
	}
	mica_db *db = mica_db_thread();
	char *detail = json_dumps(a->detail, JSON_COMPACT);
	const char *p[4] = {a->kind, a->principal, a->key, detail ? detail : "{}"};
	int err =
		db ? mica_db_exec(db,
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
		err = mica_httpc_json(s->alerts->webhook, "POST", s->cfg->alert_webhook_url, body,
				      1, &status, &reply);
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

/* A client for |url| (NULL or "": none), with the Key Center's own
 * certificate for mutual TLS. */
static int webhook_client(kc_service *s, const char *url, const char *ca, mica_httpc **out)
{
	*out = NULL;
	if (!url || !*url)
		return 0;
	mica_httpc_options o = {.ca_file = ca,
				.cert_file = s->cfg->http.cert_file,
				.key_file = s->cfg->http.key_file,
				.timeout_ms = 5000,
				.retries = 2};
	return mica_httpc_new(out, &o);
}

int kc_audit_selfcheck(kc_service *s, uint64_t *records, uint64_t *bad_seq)
{
	uint8_t key[32];
	uint64_t n = 0, bad = 0;
	/* Sealed, the MAC key is out of reach: nothing to check, no alert. */
	if (kc_service_sealed(s))
		return MICA_ESEALED;
	mica_db *db = mica_db_thread();
	int err = db ? kc_audit_mac_key(s, key) : MICA_EDBCONN;
	if (!err)
		err = kc_audit_verify_macs(db, key, &bad, &n);
	mica_wipe(key, sizeof(key));
	if (err == MICA_EAUTH || err == MICA_ECHECKSUM) {
		MICA_LOG(MICA_LOG_ERROR, "keycenter: audit self-check: record %" PRIu64 " %s", bad,
			 err == MICA_EAUTH ? "carries a MAC that does not verify"
					   : "does not give its stored hash");
		kc_alert(s, "audit_mac_failure", NULL, NULL,
			 json_pack("{s:I,s:s,s:I}", "seq", (json_int_t)bad, "problem",
				   err == MICA_EAUTH ? "bad_mac" : "bad_hash", "records_ok",
				   (json_int_t)n));
	} else if (err) {
		kc_alert(s, "audit_selfcheck_error", NULL, NULL,
			 json_pack("{s:s}", "error", mica_strerror(err)));
	} else {
		MICA_LOG(MICA_LOG_INFO, "keycenter: audit self-check: %" PRIu64 " records verify",
			 n);
	}
	if (records)
		*records = n;
	if (bad_seq)
		*bad_seq = bad;
	return err;
}

/* Runs kc_audit_selfcheck() every selfcheck_interval_s (the first run one
 * interval after start) until kc_alerts_stop(). */
static void *selfcheck_thread(void *arg)
{
	kc_service *s = arg;
	struct kc_alerts *q = s->alerts;
	int64_t every_ms = (int64_t)s->cfg->audit_selfcheck_interval_s * 1000;
	pthread_mutex_lock(&q->lock);
	while (!q->stopping) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		int64_t due_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + every_ms;
		ts.tv_sec = (time_t)(due_ms / 1000);
		ts.tv_nsec = (long)(due_ms % 1000) * 1000000L;
		int rc = 0;
		while (!q->stopping && rc != ETIMEDOUT)
			rc = pthread_cond_timedwait(&q->check_cond, &q->lock, &ts);
		if (q->stopping)
			break;
		pthread_mutex_unlock(&q->lock);
		if (kc_audit_selfcheck(s, NULL, NULL) != 0)
			MICA_LOG(MICA_LOG_DEBUG, "keycenter: audit self-check raised an alert");
		pthread_mutex_lock(&q->lock);
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

/* Appends |a| to the queue and wakes the delivery thread; q->lock held. */
static void queue_push(struct kc_alerts *q, struct alert *a)
{
	if (q->tail)
		q->tail->next = a;
	else
		q->head = a;
	q->tail = a;
	q->queued++;
	pthread_cond_signal(&q->cond);
}

void kc_audit_published(void *svc, const char *line, int rc)
{
	kc_service *s = svc;
	struct kc_alerts *q = s->alerts;
	json_t *cp = json_loads(line, 0, NULL);
	if (rc)
		kc_alert(s, "checkpoint_publish_failure", NULL, NULL,
			 json_pack("{s:O?,s:s}", "checkpoint", cp, "error", mica_strerror(rc)));
	struct alert *a = q && q->publish && cp ? calloc(1, sizeof(*a)) : NULL;
	if (!a) {
		json_decref(cp);
		return;
	}
	a->detail = cp;
	pthread_mutex_lock(&q->lock);
	if (q->queued >= QUEUE_MAX || q->stopping) {
		pthread_mutex_unlock(&q->lock);
		MICA_LOG(MICA_LOG_ERROR, "keycenter: the publish webhook queue is full; checkpoint"
					 " dropped (the publish file keeps it)");
		alert_free(a);
		return;
	}
	queue_push(q, a);
	pthread_mutex_unlock(&q->lock);
}

int kc_alerts_start(kc_service *s)
{
	struct kc_alerts *q = calloc(1, sizeof(*q));
	int err;
	if (!q)
		return MICA_ENOMEM;
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->cond, NULL);
	pthread_cond_init(&q->check_cond, NULL);
	if ((err = webhook_client(s, s->cfg->alert_webhook_url, s->cfg->alert_webhook_ca_file,
				  &q->webhook)) != 0 ||
	    (err = webhook_client(s, s->cfg->audit_publish_webhook_url,
				  s->cfg->audit_publish_webhook_ca_file, &q->publish)) != 0) {
		mica_httpc_free(q->webhook);
		free(q);
		return err;
	}
	s->alerts = q;
	if (pthread_create(&q->thread, NULL, alert_thread, s) != 0) {
		mica_httpc_free(q->webhook);
		mica_httpc_free(q->publish);
		free(q);
		s->alerts = NULL;
		return MICA_ENOMEM;
	}
	if (s->cfg->audit_selfcheck_interval_s > 0) {
		if (pthread_create(&q->selfcheck, NULL, selfcheck_thread, s) != 0) {
			kc_alerts_stop(s);
			return MICA_ENOMEM;
		}
		q->has_selfcheck = 1;
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
	pthread_cond_signal(&q->check_cond);
	pthread_mutex_unlock(&q->lock);
	if (q->has_selfcheck)
		pthread_join(q->selfcheck, NULL); /* a check in progress finishes first */
	pthread_join(q->thread, NULL);		  /* delivers what is queued first */
	mica_httpc_free(q->webhook);
	mica_httpc_free(q->publish);
	pthread_cond_destroy(&q->check_cond);
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
		json_object_set_new(a->detail, "dropped_before",
				    json_integer((json_int_t)q->dropped));
		q->dropped = 0;
	}
	queue_push(q, a);
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
		json_array_append_new(list, json_pack("{s:I,s:s,s:s,s:s?,s:s?,s:o}", "id",
						      (json_int_t)id, "ts", mica_db_get(res, r, 1),
						      "kind", mica_db_get(res, r, 2), "principal",
						      mica_db_get(res, r, 3), "key",
						      mica_db_get(res, r, 4), "detail",
						      json_loads(mica_db_get(res, r, 5), 0, NULL)));
	}
	PQclear(res);
	*out = json_pack("{s:o}", "alerts", list);
	return 0;
}
