/* broker_wake.c - the broker's Redis subscriber: one thread on its own
 * connection SUBSCRIBEd to push:wake, handing every message (W and K lines,
 * docs/push-internals.md) to the loop through a uv_async_t. When the
 * connection breaks it reconnects (each second) and, once subscribed again,
 * tells the loop to re-read the queue of every device it holds: a wake
 * published while nobody listened is then found in PostgreSQL. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "mipush/broker.h"

#define WAKE_CHANNEL "push:wake"
#define WAKE_QUEUE_MAX 100000 /* messages waiting for the loop; beyond, a resync */

struct pb_wake {
	const struct mica_kv_config *kv;
	uv_async_t *notify;
	pthread_t thread;
	bool started;
	int pipe[2]; /* stop */
	pthread_mutex_t mu;
	char **msgs;
	size_t n, cap;
	bool resync;
};

static void push_msg(struct pb_wake *w, const char *s, size_t len)
{
	char *c = malloc(len + 1);
	pthread_mutex_lock(&w->mu);
	if (c && w->n == w->cap && w->cap < WAKE_QUEUE_MAX) {
		size_t cap = w->cap ? w->cap * 2 : 64;
		char **m = realloc(w->msgs, cap * sizeof(*m));
		if (m) {
			w->msgs = m;
			w->cap = cap;
		}
	}
	if (c && w->n < w->cap) {
		memcpy(c, s, len);
		c[len] = '\0';
		w->msgs[w->n++] = c;
	} else {
		/* The loop is far behind: it re-reads every queue instead. */
		free(c);
		w->resync = true;
	}
	pthread_mutex_unlock(&w->mu);
	uv_async_send(w->notify);
}

/* Applies every complete reply in |ctx|'s reader. Returns false on a
 * protocol error. */
static bool drain(struct pb_wake *w, redisContext *ctx)
{
	void *r = NULL;
	for (;;) {
		if (redisReaderGetReply(ctx->reader, &r) != REDIS_OK)
			return false;
		if (!r)
			return true;
		redisReply *m = r;
		if (m->type == REDIS_REPLY_ARRAY && m->elements == 3 &&
		    m->element[0]->type == REDIS_REPLY_STRING &&
		    strcmp(m->element[0]->str, "message") == 0 &&
		    m->element[2]->type == REDIS_REPLY_STRING)
			push_msg(w, m->element[2]->str, m->element[2]->len);
		freeReplyObject(r);
	}
}

/* Waits |ms| or until stopped; returns true when stopped. */
static bool stopped(struct pb_wake *w, int ms)
{
	struct pollfd p = {.fd = w->pipe[0], .events = POLLIN};
	return poll(&p, 1, ms) > 0;
}

static void *wake_main(void *arg)
{
	struct pb_wake *w = arg;
	bool first = true, outage_noted = false;
	char buf[16384];

	while (!stopped(w, 0)) {
		mica_kv *kv = NULL;
		redisReply *r = NULL;
		const char *argv[] = {"SUBSCRIBE", WAKE_CHANNEL};
		int rc = mica__kv_open_quiet(&kv, w->kv);
		if (rc == 0 && (rc = mica_kv_command(kv, &r, 2, argv, NULL)) == 0 &&
		    (r->type != REDIS_REPLY_ARRAY || r->elements != 3))
			rc = MICA_EKV;
		freeReplyObject(r);
		redisContext *ctx = rc == 0 ? mica__kv_context(kv) : NULL;
		if (!ctx) {
			if (!outage_noted)
				MICA_LOG(MICA_LOG_WARN,
					 "push broker: cannot subscribe to " WAKE_CHANNEL
					 " (%s); wakes wait, devices get their queues on connect",
					 mica_strerror(rc ? rc : MICA_EKVCONN));
			outage_noted = true;
			mica_kv_close(&kv);
			if (stopped(w, 1000))
				break;
			continue;
		}
		if (outage_noted)
			MICA_LOG(MICA_LOG_INFO,
				 "push broker: subscribed to " WAKE_CHANNEL " again");
		outage_noted = false;
		if (!first) {
			pthread_mutex_lock(&w->mu);
			w->resync = true;
			pthread_mutex_unlock(&w->mu);
			uv_async_send(w->notify);
		}
		first = false;
		bool ok = drain(w, ctx);
		while (ok) {
			struct pollfd p[2] = {{.fd = w->pipe[0], .events = POLLIN},
					      {.fd = ctx->fd, .events = POLLIN}};
			if (poll(p, 2, -1) < 0) {
				if (errno == EINTR)
					continue;
				break;
			}
			if (p[0].revents)
				break;
			if (!p[1].revents)
				continue;
			ssize_t n = recv(ctx->fd, buf, sizeof(buf), MSG_DONTWAIT);
			if (n > 0)
				ok = redisReaderFeed(ctx->reader, buf, (size_t)n) == REDIS_OK &&
				     drain(w, ctx);
			else if (n == 0 || (errno != EAGAIN && errno != EINTR))
				ok = false;
		}
		if (!ok) {
			MICA_LOG(MICA_LOG_WARN, "push broker: the " WAKE_CHANNEL
						" subscription broke; reconnecting");
			outage_noted = true;
		}
		mica_kv_close(&kv);
	}
	return NULL;
}

int push__broker_wake_start(struct pb_wake **out, const struct mica_kv_config *kv,
			    uv_async_t *notify)
{
	struct pb_wake *w = calloc(1, sizeof(*w));
	*out = NULL;
	if (!w)
		return MICA_ENOMEM;
	w->kv = kv;
	w->notify = notify;
	w->pipe[0] = w->pipe[1] = -1;
	pthread_mutex_init(&w->mu, NULL);
	if (pipe(w->pipe) != 0 || pthread_create(&w->thread, NULL, wake_main, w) != 0) {
		push__broker_wake_stop(w);
		return MICA_EIO;
	}
	w->started = true;
	*out = w;
	return 0;
}

char **push__broker_wake_take(struct pb_wake *w, size_t *n, bool *resync)
{
	pthread_mutex_lock(&w->mu);
	char **m = w->msgs;
	*n = w->n;
	*resync = w->resync;
	w->msgs = NULL;
	w->n = w->cap = 0;
	w->resync = false;
	pthread_mutex_unlock(&w->mu);
	return m;
}

void push__broker_wake_stop(struct pb_wake *w)
{
	if (!w)
		return;
	if (w->started) {
		ssize_t wr = write(w->pipe[1], "x", 1);
		(void)wr;
		pthread_join(w->thread, NULL);
	}
	for (size_t i = 0; i < w->n; i++)
		free(w->msgs[i]);
	free(w->msgs);
	if (w->pipe[0] >= 0)
		close(w->pipe[0]);
	if (w->pipe[1] >= 0)
		close(w->pipe[1]);
	pthread_mutex_destroy(&w->mu);
	free(w);
}
