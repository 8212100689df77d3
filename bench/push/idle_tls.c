/* idle_tls.c - memory per idle TLS connection of a server: opens N TLS
 * connections (libuv, lib/uvtls, source addresses spread over 127.0.0.0/8),
 * optionally sends each an MQTT CONNECT and waits for its CONNACK, lets them
 * sit idle, and reports the server's RSS growth (VmRSS of /proc/PID/status)
 * per connection. The server is either a lib/uvtls server forked here (that
 * answers any bytes with a CONNACK) or an external process (mosquitto) given
 * by pid and port, so both are measured by the same client.
 *
 * Usage: idle_tls -n N -a CA [-C CERT -K KEY [-d MS]] [-p PORT -P PID] [-m] [-c CONC]
 *   -n N     connections to hold (default 1000)
 *   -a CA    PEM CA the server chains to
 *   -C, -K   server certificate and key for the forked lib/uvtls server
 *   -d MS    the forked server's detach_idle_ms (default 0: connections keep
 *            their SSL object); the settle time must exceed it
 *   -p, -P   port and pid of an external server instead of the forked one
 *   -m       MQTT: a CONNECT after the handshake, wait for the CONNACK
 *   -c CONC  handshakes in flight at once (default 64)
 *   -s SECS  idle time before the measurement (default 2)
 * Prints one line: server=... n=N rss_before_kb=... rss_after_kb=...
 * bytes_per_conn=... failed=...
 */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "thread.h"
#include "uvtls.h"

static struct {
	uv_loop_t *loop;
	SSL_CTX *ctx;
	int port;
	int n, conc, started, ready, failed, inflight;
	int closed[8];	/* by mica_uvtls_close_reason */
	uint8_t *acked; /* per connection index: CONNACK seen */
	bool mqtt;
	unsigned settle_s;
	unsigned detach_ms;
} B;

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static long rss_kb(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	long kb = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/* ---- The forked server: holds connections, answers bytes with a CONNACK */

static void srv_data(mica_uvtls_conn *c, const uint8_t *d, size_t n)
{
	(void)d;
	(void)n;
	static const uint8_t connack[] = {0x20, 0x02, 0x00, 0x00};
	if (mica_uvtls_write(c, connack, sizeof(connack)) != 0)
		mica_uvtls_close(c);
}

/* SIGUSR1: the heap's view (bytes in use, free bytes kept) on stderr, so a
 * run shows how much of the RSS growth is live objects. */
static void srv_heap(uv_signal_t *h, int sig)
{
	(void)h;
	(void)sig;
	struct mallinfo2 mi = mallinfo2();
	fprintf(stderr, "idle_tls: server heap in_use=%zu free=%zu mmap=%zu\n", mi.uordblks,
		mi.fordblks, mi.hblkhd);
}

static void run_server(const char *cert, const char *key, int ready_fd)
{
	uv_loop_t loop;
	uv_loop_init(&loop);
	mica_thread_set_event(true);
	mica_uvtls_server_options o = {.host = "127.0.0.1",
				       .cert_file = cert,
				       .key_file = key,
				       .detach_idle_ms = B.detach_ms};
	mica_uvtls_callbacks cb = {.on_data = srv_data};
	mica_uvtls_server *s;
	if (mica_uvtls_server_new(&loop, &o, &cb, NULL, &s) != 0)
		_exit(2);
	uv_signal_t sig;
	uv_signal_init(&loop, &sig);
	uv_signal_start(&sig, srv_heap, SIGUSR1);
	uv_unref((uv_handle_t *)&sig);
	int port = mica_uvtls_server_port(s);
	if (write(ready_fd, &port, sizeof(port)) != (ssize_t)sizeof(port))
		_exit(2);
	close(ready_fd);
	uv_run(&loop, UV_RUN_DEFAULT);
	_exit(0);
}

/* ---- The client --------------------------------------------------------- */

static void start_more(void);

static void cli_open(mica_uvtls_conn *c)
{
	if (!B.mqtt) {
		B.acked[(intptr_t)mica_uvtls_user(c)] = 1;
		B.inflight--;
		B.ready++;
		start_more();
		return;
	}
	/* CONNECT, MQTT 3.1.1, clean session, keepalive 600 s, a unique id. */
	char id[16];
	int idlen = snprintf(id, sizeof(id), "b%07d", (int)(intptr_t)mica_uvtls_user(c));
	uint8_t pkt[64] = {0x10, (uint8_t)(10 + 2 + idlen),
			   0,	 4,
			   'M',	 'Q',
			   'T',	 'T',
			   4,	 2,
			   0x02, 0x58,
			   0,	 (uint8_t)idlen};
	memcpy(pkt + 14, id, (size_t)idlen);
	if (mica_uvtls_write(c, pkt, 14 + (size_t)idlen) != 0)
		mica_uvtls_close(c);
}

static void cli_data(mica_uvtls_conn *c, const uint8_t *d, size_t n)
{
	intptr_t i = (intptr_t)mica_uvtls_user(c);
	if (B.mqtt && !B.acked[i] && n >= 4 && d[0] == 0x20) {
		B.acked[i] = 1;
		B.inflight--;
		B.ready++;
		start_more();
	}
}

static void cli_close(mica_uvtls_conn *c, mica_uvtls_close_reason r)
{
	intptr_t i = (intptr_t)mica_uvtls_user(c);
	B.failed++;
	B.closed[r & 7]++;
	if (!B.acked[i])
		B.inflight--;
	else
		B.ready--;
	start_more();
}

static const mica_uvtls_callbacks cli_cb = {
	.on_open = cli_open, .on_data = cli_data, .on_close = cli_close};

static void start_more(void)
{
	while (B.started < B.n && B.inflight < B.conc) {
		char src[32];
		int i = B.started;
		/* 127.0.0.2 .. 127.0.1.255: 510 source addresses. */
		snprintf(src, sizeof(src), "127.0.%d.%d", (i / 254) % 2, 2 + i % 254);
		mica_uvtls_connect_options o = {
			.host = "127.0.0.1", .port = B.port, .source = src, .timeout_ms = 30000};
		mica_uvtls_conn *c;
		B.started++;
		if (mica_uvtls_connect(B.loop, B.ctx, &o, &cli_cb, (void *)(intptr_t)i, &c) != 0) {
			B.failed++;
			continue;
		}
		B.inflight++;
	}
	if (B.ready + B.failed >= B.n)
		uv_stop(B.loop);
}

static void settle_done(uv_timer_t *t)
{
	uv_stop(t->loop);
}

int main(int argc, char **argv)
{
	const char *ca = NULL, *cert = NULL, *key = NULL;
	pid_t pid = 0;
	int opt;
	B.n = 1000;
	B.conc = 64;
	B.settle_s = 2;
	while ((opt = getopt(argc, argv, "n:a:C:K:p:P:mc:s:d:")) != -1) {
		switch (opt) {
		case 'n':
			B.n = atoi(optarg);
			break;
		case 'a':
			ca = optarg;
			break;
		case 'C':
			cert = optarg;
			break;
		case 'K':
			key = optarg;
			break;
		case 'p':
			B.port = atoi(optarg);
			break;
		case 'P':
			pid = (pid_t)atoi(optarg);
			break;
		case 'm':
			B.mqtt = true;
			break;
		case 'c':
			B.conc = atoi(optarg);
			break;
		case 's':
			B.settle_s = (unsigned)atoi(optarg);
			break;
		case 'd':
			B.detach_ms = (unsigned)atoi(optarg);
			break;
		default:
			fprintf(stderr,
				"usage: see the comment at the top of bench/push/idle_tls.c\n");
			return 2;
		}
	}
	if (!ca || B.n <= 0 || B.conc <= 0 || (!pid && (!cert || !key)) || (pid && !B.port)) {
		fprintf(stderr,
			"idle_tls: need -a CA and either -C CERT -K KEY or -p PORT -P PID\n");
		return 2;
	}
	raise_nofile();
	signal(SIGPIPE, SIG_IGN);
	bool forked = false;
	if (!pid) {
		int fds[2];
		if (pipe(fds) != 0)
			return 1;
		pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			close(fds[0]);
			run_server(cert, key, fds[1]);
		}
		close(fds[1]);
		if (read(fds[0], &B.port, sizeof(B.port)) != (ssize_t)sizeof(B.port)) {
			fprintf(stderr, "idle_tls: the server did not start\n");
			return 1;
		}
		close(fds[0]);
		forked = true;
	}
	uv_loop_t loop;
	uv_loop_init(&loop);
	B.loop = &loop;
	mica_thread_set_event(true);
	if (mica_uvtls_client_ctx_new(ca, NULL, NULL, &B.ctx) != 0) {
		fprintf(stderr, "idle_tls: cannot load CA %s\n", ca);
		return 1;
	}
	/* Warm-up: one connection makes the server allocate what it keeps for
	 * its lifetime (per-thread buffers, OpenSSL's lazy tables). */
	int n = B.n;
	B.acked = calloc((size_t)n + 1, 1);
	if (!B.acked)
		return 1;
	B.n = 1;
	start_more();
	uv_run(&loop, UV_RUN_DEFAULT);
	sleep(1);
	if (forked)
		kill(pid, SIGUSR1);
	long before = rss_kb(pid);
	B.n = n + 1;
	start_more();
	uv_run(&loop, UV_RUN_DEFAULT);
	uv_timer_t settle;
	uv_timer_init(&loop, &settle);
	uv_timer_start(&settle, settle_done, B.settle_s * 1000u, 0);
	uv_run(&loop, UV_RUN_DEFAULT);
	if (forked) {
		kill(pid, SIGUSR1);
		usleep(200000);
	}
	long after = rss_kb(pid);
	int held = B.ready - 1;
	printf("server=%s detach_ms=%u n=%d held=%d rss_before_kb=%ld rss_after_kb=%ld bytes_per_conn=%.0f "
	       "failed=%d\n",
	       forked ? "mica-uvtls" : "external", B.detach_ms, n, held, before, after,
	       held > 0 ? (double)(after - before) * 1024.0 / held : 0.0, B.failed);
	for (int r = 0; r < 8; r++)
		if (B.closed[r])
			fprintf(stderr, "idle_tls: %d connections closed: %s\n", B.closed[r],
				mica_uvtls_close_name((mica_uvtls_close_reason)r));
	fflush(stdout);
	if (forked) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	return B.failed > 0 ? 1 : 0;
}
