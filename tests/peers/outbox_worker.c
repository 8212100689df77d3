/* outbox_worker.c - test peer for tests/integration/test_outbox.c: an outbox
 * consumer whose handler records each event in effects(consumer, event_id, n),
 * bumping n on a repeat so a duplicate delivery would show. It reports
 * progress on stdout ("e ID TOTAL" per handled event, "c N" per commit,
 * "paused" when --pause-at is reached) so the test can SIGKILL it mid-batch.
 * It exits 0 once no event arrived for --idle-ms.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "err.h"
#include "log.h"
#include "outbox.h"

struct worker {
	const char *consumer;
	long sleep_ms;
	long pause_at; /* 0: never */
	long handled;  /* handler calls in this process, committed or not */
};

static int handle(mica_db *db, const struct mica_outbox_event *ev, void *arg)
{
	struct worker *w = arg;
	char id[24];
	snprintf(id, sizeof(id), "%lld", (long long)ev->id);
	const char *p[2] = {w->consumer, id};
	int rc = mica_db_exec(
		db,
		"INSERT INTO effects (consumer, event_id, n) VALUES ($1, $2::bigint, 1)"
		" ON CONFLICT (consumer, event_id) DO UPDATE SET n = effects.n + 1",
		2, p, NULL);
	if (rc)
		return rc;
	w->handled++;
	printf("e %lld %ld\n", (long long)ev->id, w->handled);
	fflush(stdout);
	if (w->pause_at && w->handled == w->pause_at) {
		/* Hold the batch's transaction open until we are killed. */
		printf("paused\n");
		fflush(stdout);
		for (;;)
			pause();
	}
	/* Simulated work, so that a kill lands inside a batch. */
	struct timespec ts = {.tv_sec = w->sleep_ms / 1000,
			      .tv_nsec = (w->sleep_ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: outbox_worker --db CONNINFO --consumer NAME [--batch N]"
			" [--sleep-ms N] [--pause-at N] [--idle-ms N]\n");
	exit(64);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"db", required_argument, NULL, 'd'},
		{"consumer", required_argument, NULL, 'c'},
		{"batch", required_argument, NULL, 'b'},
		{"sleep-ms", required_argument, NULL, 's'},
		{"pause-at", required_argument, NULL, 'p'},
		{"idle-ms", required_argument, NULL, 'i'},
		{NULL, 0, NULL, 0},
	};
	const char *conninfo = NULL;
	struct worker w = {0};
	int batch = 50, idle_ms = 500;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			conninfo = optarg;
			break;
		case 'c':
			w.consumer = optarg;
			break;
		case 'b':
			batch = atoi(optarg);
			break;
		case 's':
			w.sleep_ms = atol(optarg);
			break;
		case 'p':
			w.pause_at = atol(optarg);
			break;
		case 'i':
			idle_ms = atoi(optarg);
			break;
		default:
			usage();
		}
	}
	if (!conninfo || !w.consumer || batch < 1 || idle_ms < 0 || w.sleep_ms < 0)
		usage();
	mica_log_min_level = MICA_LOG_ERROR;

	mica_db *db = NULL;
	int rc = mica_db_open(&db, conninfo);
	if (rc) {
		fprintf(stderr, "outbox_worker: connect: %s\n", mica_db_errmsg(NULL));
		return 1;
	}
	for (;;) {
		int handled = 0;
		rc = mica_outbox_consume(db, w.consumer, batch, handle, &w, &handled);
		if (rc) {
			fprintf(stderr, "outbox_worker: consume: %s: %s\n", mica_strerror(rc),
				mica_db_errmsg(db));
			break;
		}
		if (handled > 0) {
			printf("c %d\n", handled);
			fflush(stdout);
			continue;
		}
		rc = mica_outbox_wait(db, w.consumer, idle_ms);
		if (rc == MICA_ETIMEOUT) {
			rc = 0;
			break;
		}
		if (rc) {
			fprintf(stderr, "outbox_worker: wait: %s\n", mica_strerror(rc));
			break;
		}
	}
	mica_db_close(&db);
	return rc ? 1 : 0;
}
