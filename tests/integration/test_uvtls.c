/* test_uvtls.c - lib/uvtls over real TLS on loopback with the test CA: echo
 * round trips small and large, garbage instead of a ClientHello, a corrupt
 * record after the handshake, the handshake deadline against a silent and a
 * dribbling peer, the idle timeout, session resumption (TLS 1.3 and 1.2),
 * two processes on one SO_REUSEPORT port resuming each other's sessions with
 * a shared ticket secret (and not without it), and write backpressure
 * against a peer that stops reading, and detached connections
 * (detach_idle_ms): echo, a 100 KB server write, a KeyUpdate requested by an
 * OpenSSL client, a record arriving a byte at a time, close_notify, and an
 * altered record answered with bad_record_mac. The server runs on its own loop thread
 * (or in forked processes); the clients are lib/uvtls clients on the test's
 * thread, or a blocking OpenSSL client on a plain socket where the test
 * needs a peer that misbehaves.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "crypto.h"
#include "tests/check_main.h"
#include "thread.h"
#include "uvtls.h"

static const char *env(const char *name)
{
	const char *v = getenv(name);
	ck_assert_msg(v && *v, "environment variable %s is not set (run through tests/run)", name);
	return v;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- The server: a loop thread (or a forked process) -------------------- */

struct srv {
	/* set before start */
	unsigned handshake_ms, idle_ms, detach_ms;
	size_t flood; /* bytes written at on_open, in 1 MiB writes */
	bool banner;  /* "pid N\n" at on_open */
	bool reuseport;
	int port;
	const char *ticket_file;
	/* filled by the server thread */
	pthread_t th;
	uv_loop_t loop;
	uv_async_t stop;
	mica_uvtls_server *s;
	atomic_int ready, opened, drains;
	atomic_int data_attached, data_detached; /* on_data calls by state */
	atomic_int open_without_ssl;		 /* on_open with mica_uvtls_ssl NULL */
	atomic_int closed[8];
	atomic_size_t max_pending, pending_at_drain, written;
};

static void srv_on_open(mica_uvtls_conn *c)
{
	struct srv *v = mica_uvtls_server_user(mica_uvtls_conn_server(c));
	atomic_fetch_add(&v->opened, 1);
	if (!mica_uvtls_ssl(c) || mica_uvtls_detached(c))
		atomic_fetch_add(&v->open_without_ssl, 1);
	if (v->idle_ms)
		mica_uvtls_set_idle_timeout(c, v->idle_ms);
	if (v->banner) {
		char b[32];
		int n = snprintf(b, sizeof(b), "pid %d\n", (int)getpid());
		ck_assert_int_eq(mica_uvtls_write(c, b, (size_t)n), 0);
	}
	if (v->flood) {
		size_t chunk = 1u << 20;
		uint8_t *buf = malloc(chunk);
		ck_assert_ptr_nonnull(buf);
		for (size_t off = 0; off < v->flood; off += chunk) {
			for (size_t i = 0; i < chunk; i++)
				buf[i] = (uint8_t)((off + i) * 7 + 1);
			ck_assert_int_eq(mica_uvtls_write(c, buf, chunk), 0);
			atomic_fetch_add(&v->written, chunk);
			size_t p = mica_uvtls_pending(c);
			if (p > atomic_load(&v->max_pending))
				atomic_store(&v->max_pending, p);
		}
		free(buf);
	}
}

/* The 100 KB a server sends in one mica_uvtls_write when asked "BIG". */
#define BIG_LEN 100000
static uint8_t big_byte(size_t i)
{
	return (uint8_t)(i * 13 + 5);
}

static void srv_on_data(mica_uvtls_conn *c, const uint8_t *d, size_t n)
{
	struct srv *v = mica_uvtls_server_user(mica_uvtls_conn_server(c));
	atomic_fetch_add(mica_uvtls_detached(c) ? &v->data_detached : &v->data_attached, 1);
	if (n == 3 && memcmp(d, "BIG", 3) == 0) {
		uint8_t *buf = malloc(BIG_LEN);
		ck_assert_ptr_nonnull(buf);
		for (size_t i = 0; i < BIG_LEN; i++)
			buf[i] = big_byte(i);
		ck_assert_int_eq(mica_uvtls_write(c, buf, BIG_LEN), 0);
		free(buf);
		return;
	}
	if (mica_uvtls_write(c, d, n) != 0)
		mica_uvtls_close(c);
	if (n >= 3 && memcmp(d + n - 3, "BYE", 3) == 0)
		mica_uvtls_close(c);
}

static void srv_on_drain(mica_uvtls_conn *c)
{
	struct srv *v = mica_uvtls_server_user(mica_uvtls_conn_server(c));
	atomic_store(&v->pending_at_drain, mica_uvtls_pending(c));
	atomic_fetch_add(&v->drains, 1);
}

static void srv_on_close(mica_uvtls_conn *c, mica_uvtls_close_reason r)
{
	struct srv *v = mica_uvtls_server_user(mica_uvtls_conn_server(c));
	atomic_fetch_add(&v->closed[r & 7], 1);
}

static const mica_uvtls_callbacks srv_cb = {.on_open = srv_on_open,
					    .on_data = srv_on_data,
					    .on_drain = srv_on_drain,
					    .on_close = srv_on_close};

static void srv_stop(uv_async_t *a)
{
	struct srv *v = a->data;
	mica_uvtls_server_free(v->s);
	uv_close((uv_handle_t *)a, NULL);
}

static void *srv_main(void *arg)
{
	struct srv *v = arg;
	mica_thread_set_event(true);
	ck_assert_int_eq(uv_loop_init(&v->loop), 0);
	mica_uvtls_server_options o = {.host = "127.0.0.1",
				       .port = v->port,
				       .reuseport = v->reuseport,
				       .cert_file = env("MICA_CERT_SERVER"),
				       .key_file = env("MICA_KEY_SERVER"),
				       .ticket_secret_file = v->ticket_file,
				       .handshake_timeout_ms = v->handshake_ms,
				       .detach_idle_ms = v->detach_ms,
				       .keepalive_s = 60};
	ck_assert_int_eq(mica_uvtls_server_new(&v->loop, &o, &srv_cb, v, &v->s), 0);
	v->port = mica_uvtls_server_port(v->s);
	uv_async_init(&v->loop, &v->stop, srv_stop);
	v->stop.data = v;
	atomic_store(&v->ready, 1);
	uv_run(&v->loop, UV_RUN_DEFAULT);
	ck_assert_int_eq(uv_loop_close(&v->loop), 0);
	return NULL;
}

static void srv_start(struct srv *v)
{
	ck_assert_int_eq(pthread_create(&v->th, NULL, srv_main, v), 0);
	while (!atomic_load(&v->ready))
		usleep(1000);
}

static void srv_join(struct srv *v)
{
	uv_async_send(&v->stop);
	ck_assert_int_eq(pthread_join(v->th, NULL), 0);
}

/* Waits (at most |ms|) until the server counted |n| closes for |r|. */
static void wait_closed(struct srv *v, mica_uvtls_close_reason r, int n, int ms)
{
	for (int i = 0; i < ms && atomic_load(&v->closed[r]) < n; i++)
		usleep(1000);
	ck_assert_int_eq(atomic_load(&v->closed[r]), n);
}

/* ---- lib/uvtls clients on the test's loop -------------------------------- */

struct cli {
	mica_uvtls_conn *c;
	bool open, closed;
	mica_uvtls_close_reason reason;
	uint8_t *rx;
	size_t rx_len, rx_cap;
	SSL_SESSION *sess;
	bool reused;
	char version[16];
};

static void cli_open(mica_uvtls_conn *c)
{
	struct cli *k = mica_uvtls_user(c);
	k->open = true;
	k->reused = SSL_session_reused(mica_uvtls_ssl(c)) == 1;
	snprintf(k->version, sizeof(k->version), "%s", SSL_get_version(mica_uvtls_ssl(c)));
}

static void cli_data(mica_uvtls_conn *c, const uint8_t *d, size_t n)
{
	struct cli *k = mica_uvtls_user(c);
	if (k->rx_len + n > k->rx_cap) {
		k->rx_cap = (k->rx_len + n) * 2;
		k->rx = realloc(k->rx, k->rx_cap);
		ck_assert_ptr_nonnull(k->rx);
	}
	memcpy(k->rx + k->rx_len, d, n);
	k->rx_len += n;
}

static void cli_session(mica_uvtls_conn *c, SSL_SESSION *s)
{
	struct cli *k = mica_uvtls_user(c);
	SSL_SESSION_free(k->sess);
	SSL_SESSION_up_ref(s);
	k->sess = s;
}

static void cli_close(mica_uvtls_conn *c, mica_uvtls_close_reason r)
{
	struct cli *k = mica_uvtls_user(c);
	k->closed = true;
	k->reason = r;
	k->c = NULL;
}

static const mica_uvtls_callbacks cli_cb = {
	.on_open = cli_open, .on_data = cli_data, .on_session = cli_session, .on_close = cli_close};

static void run_a_bit(uv_loop_t *loop, useconds_t us)
{
	uv_run(loop, UV_RUN_NOWAIT);
	usleep(us);
}

/* Runs |loop| until *flag is true or |ms| pass; returns *flag. */
static bool run_until(uv_loop_t *loop, const bool *flag, int ms)
{
	double end = now_s() + ms / 1000.0;
	while (!*flag && now_s() < end)
		run_a_bit(loop, 200);
	return *flag;
}

static bool run_until_rx(uv_loop_t *loop, struct cli *k, size_t want, int ms)
{
	double end = now_s() + ms / 1000.0;
	while (k->rx_len < want && !k->closed && now_s() < end)
		run_a_bit(loop, 100);
	return k->rx_len >= want;
}

static SSL_CTX *client_ctx(int max_version)
{
	SSL_CTX *ctx;
	ck_assert_int_eq(mica_uvtls_client_ctx_new(env("MICA_CA"), NULL, NULL, &ctx), 0);
	if (max_version)
		ck_assert_int_eq(SSL_CTX_set_max_proto_version(ctx, max_version), 1);
	return ctx;
}

static void cli_connect(uv_loop_t *loop, SSL_CTX *ctx, int port, const char *source,
			SSL_SESSION *sess, struct cli *k)
{
	mica_uvtls_connect_options o = {
		.host = "127.0.0.1", .port = port, .source = source, .session = sess};
	ck_assert_int_eq(mica_uvtls_connect(loop, ctx, &o, &cli_cb, k, &k->c), 0);
	ck_assert_msg(run_until(loop, &k->open, 5000), "no handshake (closed: %s)",
		      k->closed ? mica_uvtls_close_name(k->reason) : "no");
}

static void cli_finish(uv_loop_t *loop, struct cli *k)
{
	if (k->c)
		mica_uvtls_close(k->c);
	ck_assert(run_until(loop, &k->closed, 5000));
	free(k->rx);
	SSL_SESSION_free(k->sess);
	memset(k, 0, sizeof(*k));
}

static void loop_finish(uv_loop_t *loop)
{
	for (int i = 0; i < 50; i++)
		run_a_bit(loop, 1000);
	ck_assert_int_eq(uv_loop_close(loop), 0);
}

/* ---- Tests --------------------------------------------------------------- */

START_TEST(echo_small_and_large)
{
	struct srv v = {0};
	srv_start(&v);
	uv_loop_t loop;
	uv_loop_init(&loop);
	SSL_CTX *ctx = client_ctx(0);
	struct cli k = {0};
	cli_connect(&loop, ctx, v.port, NULL, NULL, &k);
	ck_assert_str_eq(k.version, "TLSv1.3");
	ck_assert_int_eq(mica_uvtls_write(k.c, "hello", 5), 0);
	ck_assert(run_until_rx(&loop, &k, 5, 5000));
	ck_assert_int_eq(memcmp(k.rx, "hello", 5), 0);
	/* 3 MiB and a bit: many records, partial reads, queued writes. */
	size_t big = (3u << 20) + 12345;
	uint8_t *buf = malloc(big);
	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(mica_random(buf, big), 0);
	ck_assert_int_eq(mica_uvtls_write(k.c, buf, big), 0);
	ck_assert(run_until_rx(&loop, &k, 5 + big, 20000));
	ck_assert_uint_eq(k.rx_len, 5 + big);
	ck_assert_int_eq(memcmp(k.rx + 5, buf, big), 0);
	ck_assert_uint_eq(mica_uvtls_pending(k.c), 0);
	free(buf);
	/* An empty write is a no-op; NULL is refused. */
	ck_assert_int_eq(mica_uvtls_write(k.c, "", 0), 0);
	ck_assert_int_eq(mica_uvtls_write(NULL, "x", 1), MICA_EINVAL);
	/* detach_idle_ms 0: no connection ever detaches. */
	ck_assert_int_eq(atomic_load(&v.data_detached), 0);
	ck_assert_int_gt(atomic_load(&v.data_attached), 0);
	cli_finish(&loop, &k);
	wait_closed(&v, MICA_UVTLS_CLOSED_PEER, 1, 3000);
	SSL_CTX_free(ctx);
	loop_finish(&loop);
	srv_join(&v);
}
END_TEST

/* A plain TCP connection to 127.0.0.1:|port|. */
static int tcp_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(fd, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/* Reads until EOF or reset; returns the seconds it took, or -1 after |ms|. */
static double wait_eof(int fd, int ms)
{
	double start = now_s();
	char buf[4096];
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int left = ms - (int)((now_s() - start) * 1000);
		if (left <= 0 || poll(&p, 1, left) <= 0)
			return -1;
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n == 0 || (n < 0 && errno == ECONNRESET))
			return now_s() - start;
		if (n < 0 && errno != EINTR)
			return -1;
	}
}

static void echo_still_works(int port)
{
	uv_loop_t loop;
	uv_loop_init(&loop);
	SSL_CTX *ctx = client_ctx(0);
	struct cli k = {0};
	cli_connect(&loop, ctx, port, NULL, NULL, &k);
	ck_assert_int_eq(mica_uvtls_write(k.c, "ping", 4), 0);
	ck_assert(run_until_rx(&loop, &k, 4, 5000));
	cli_finish(&loop, &k);
	SSL_CTX_free(ctx);
	loop_finish(&loop);
}

START_TEST(garbage_instead_of_client_hello)
{
	struct srv v = {0};
	srv_start(&v);
	static const struct {
		const char *d;
		size_t n;
	} garbage[] = {
		{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27},
		/* a handshake record claiming 65535 bytes */
		{"\x16\x03\x01\xff\xff"
		 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		 53},
		/* a ClientHello whose body is one byte */
		{"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", 10},
		/* an alert before any handshake */
		{"\x15\x03\x03\x00\x02\x02\x28", 7},
	};
	for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
		int fd = tcp_connect(v.port);
		ck_assert_int_eq(write(fd, garbage[i].d, garbage[i].n), (ssize_t)garbage[i].n);
		ck_assert_msg(wait_eof(fd, 3000) >= 0, "garbage %zu: connection kept open", i);
		close(fd);
		wait_closed(&v, MICA_UVTLS_CLOSED_TLS, (int)i + 1, 3000);
	}
	ck_assert_int_eq(atomic_load(&v.opened), 0);
	echo_still_works(v.port);
	srv_join(&v);
}
END_TEST

/* A blocking OpenSSL client on a plain socket: a peer this test controls
 * byte by byte. Returns the SSL with the handshake done; *fd_out is its
 * socket. */
static SSL *raw_tls(int port, SSL_CTX **ctx_out, int *fd_out, int rcvbuf)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	ck_assert_ptr_nonnull(ctx);
	ck_assert_int_eq(SSL_CTX_load_verify_locations(ctx, env("MICA_CA"), NULL), 1);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (rcvbuf)
		ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	SSL *ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	ck_assert_int_eq(SSL_connect(ssl), 1);
	*ctx_out = ctx;
	*fd_out = fd;
	return ssl;
}

START_TEST(corrupt_record_after_handshake)
{
	struct srv v = {0};
	srv_start(&v);
	SSL_CTX *ctx;
	int fd;
	SSL *ssl = raw_tls(v.port, &ctx, &fd, 0);
	ck_assert_int_eq(SSL_write(ssl, "ok", 2), 2);
	char b[2];
	ck_assert_int_eq(SSL_read(ssl, b, 2), 2);
	/* An application-data record whose tag cannot verify. */
	uint8_t rec[5 + 40] = {0x17, 0x03, 0x03, 0x00, 40};
	ck_assert_int_eq(mica_random(rec + 5, 40), 0);
	ck_assert_int_eq(write(fd, rec, sizeof(rec)), (ssize_t)sizeof(rec));
	ck_assert(wait_eof(fd, 3000) >= 0);
	wait_closed(&v, MICA_UVTLS_CLOSED_TLS, 1, 3000);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	echo_still_works(v.port);
	srv_join(&v);
}
END_TEST

START_TEST(handshake_timeout_closes_silent_and_dribbling_peers)
{
	struct srv v = {.handshake_ms = 600};
	srv_start(&v);
	/* Silent: connects and says nothing. */
	int fd = tcp_connect(v.port);
	double t = wait_eof(fd, 5000);
	close(fd);
	ck_assert_msg(t >= 0.5 && t < 2.0, "silent peer closed after %.2f s", t);
	wait_closed(&v, MICA_UVTLS_CLOSED_HANDSHAKE_TIMEOUT, 1, 3000);
	/* Dribbling: the start of a ClientHello, one byte every 100 ms; bytes
	 * do not move the deadline. */
	static const uint8_t hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc,
					0x03, 0x03, 1,	  2,	3,    4,    5,	  6,	7};
	fd = tcp_connect(v.port);
	double start = now_s();
	bool closed = false;
	for (size_t i = 0; i < sizeof(hello) && !closed; i++) {
		if (write(fd, hello + i, 1) != 1)
			closed = true;
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 100) > 0)
			closed = true;
	}
	if (!closed)
		ck_assert(wait_eof(fd, 3000) >= 0);
	t = now_s() - start;
	close(fd);
	ck_assert_msg(t >= 0.5 && t < 2.0, "dribbling peer closed after %.2f s", t);
	wait_closed(&v, MICA_UVTLS_CLOSED_HANDSHAKE_TIMEOUT, 2, 3000);
	ck_assert_int_eq(atomic_load(&v.opened), 0);
	echo_still_works(v.port);
	srv_join(&v);
}
END_TEST

START_TEST(idle_timeout_closes_a_silent_connection_only)
{
	struct srv v = {.idle_ms = 700};
	srv_start(&v);
	uv_loop_t loop;
	uv_loop_init(&loop);
	SSL_CTX *ctx = client_ctx(0);
	struct cli quiet = {0}, chatty = {0};
	cli_connect(&loop, ctx, v.port, NULL, NULL, &quiet);
	cli_connect(&loop, ctx, v.port, NULL, NULL, &chatty);
	double start = now_s();
	while (now_s() - start < 2.0 && chatty.c) {
		ck_assert_int_eq(mica_uvtls_write(chatty.c, "k", 1), 0);
		for (int i = 0; i < 20; i++)
			run_a_bit(&loop, 10000);
	}
	ck_assert_msg(quiet.closed, "the silent connection is still open");
	ck_assert_msg(!chatty.closed, "the talking connection was closed: %s",
		      mica_uvtls_close_name(chatty.reason));
	wait_closed(&v, MICA_UVTLS_CLOSED_IDLE_TIMEOUT, 1, 3000);
	cli_finish(&loop, &chatty);
	cli_finish(&loop, &quiet);
	SSL_CTX_free(ctx);
	loop_finish(&loop);
	srv_join(&v);
}
END_TEST

static void resumes(int max_version, const char *want_version)
{
	struct srv v = {0};
	srv_start(&v);
	uv_loop_t loop;
	uv_loop_init(&loop);
	SSL_CTX *ctx = client_ctx(max_version);
	struct cli a = {0}, b = {0};
	cli_connect(&loop, ctx, v.port, NULL, NULL, &a);
	ck_assert_str_eq(a.version, want_version);
	ck_assert(!a.reused);
	/* TLS 1.3 sends the ticket after the handshake: a round trip makes sure
	 * it arrived. */
	ck_assert_int_eq(mica_uvtls_write(a.c, "x", 1), 0);
	ck_assert(run_until_rx(&loop, &a, 1, 5000));
	ck_assert_ptr_nonnull(a.sess);
	ck_assert_int_eq(SSL_SESSION_is_resumable(a.sess), 1);
	cli_connect(&loop, ctx, v.port, NULL, a.sess, &b);
	ck_assert_msg(b.reused, "the session was not resumed");
	ck_assert_str_eq(b.version, want_version);
	cli_finish(&loop, &b);
	cli_finish(&loop, &a);
	SSL_CTX_free(ctx);
	loop_finish(&loop);
	srv_join(&v);
}

START_TEST(session_resumes_tls13)
{
	resumes(0, "TLSv1.3");
}
END_TEST

START_TEST(session_resumes_tls12)
{
	resumes(TLS1_2_VERSION, "TLSv1.2");
}
END_TEST

/* A server process on |port| with SO_REUSEPORT that greets with its pid. */
static pid_t fork_server(int *port, const char *ticket_file)
{
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(fds[0]);
		static struct srv v;
		v.banner = true;
		v.reuseport = true;
		v.port = *port;
		v.ticket_file = ticket_file;
		mica_thread_set_event(true);
		uv_loop_init(&v.loop);
		mica_uvtls_server_options o = {.host = "127.0.0.1",
					       .port = v.port,
					       .reuseport = true,
					       .cert_file = env("MICA_CERT_SERVER"),
					       .key_file = env("MICA_KEY_SERVER"),
					       .ticket_secret_file = ticket_file};
		if (mica_uvtls_server_new(&v.loop, &o, &srv_cb, &v, &v.s) != 0)
			_exit(3);
		int p = mica_uvtls_server_port(v.s);
		if (write(fds[1], &p, sizeof(p)) != (ssize_t)sizeof(p))
			_exit(3);
		close(fds[1]);
		uv_run(&v.loop, UV_RUN_DEFAULT);
		_exit(0);
	}
	close(fds[1]);
	int p = 0;
	ck_assert_int_eq(read(fds[0], &p, sizeof(p)), (ssize_t)sizeof(p));
	close(fds[0]);
	*port = p;
	return pid;
}

/* Connects (from a new source address each try) until the greeting names
 * |want|, and leaves that connection in |k|. *sess (owned, may be NULL) is
 * offered for resumption; a TLS 1.3 session is spent once it resumed (OpenSSL
 * marks it not resumable when the renewed ticket arrives), so a try that
 * lands on the wrong process hands its fresh ticket to the next try. */
static void connect_to_pid(uv_loop_t *loop, SSL_CTX *ctx, int port, pid_t want, SSL_SESSION **sess,
			   struct cli *k, int *tries)
{
	char expect[32];
	snprintf(expect, sizeof(expect), "pid %d\n", (int)want);
	for (; *tries < 200; (*tries)++) {
		char src[32];
		snprintf(src, sizeof(src), "127.0.%d.%d", 1 + *tries / 250, 1 + *tries % 250);
		cli_connect(loop, ctx, port, src, *sess, k);
		ck_assert(run_until_rx(loop, k, strlen(expect), 5000));
		if (k->rx_len == strlen(expect) && memcmp(k->rx, expect, k->rx_len) == 0) {
			(*tries)++;
			return;
		}
		if (*sess) {
			/* A round trip so a renewed ticket, if any, has arrived. */
			ck_assert_int_eq(mica_uvtls_write(k->c, "x", 1), 0);
			ck_assert(run_until_rx(loop, k, k->rx_len + 1, 5000));
			if (k->sess) {
				SSL_SESSION_free(*sess);
				*sess = k->sess;
				k->sess = NULL;
			}
		}
		cli_finish(loop, k);
	}
	ck_abort_msg("no connection reached pid %d", (int)want);
}

START_TEST(reuseport_workers_resume_each_others_sessions)
{
	/* _i == 0: both read one ticket secret; _i == 1: each its own random
	 * one, so the resumption across processes must fail. */
	char path[512] = "";
	if (_i == 0) {
		snprintf(path, sizeof(path), "%s/uvtls-ticket-%d", env("MICA_TEST_DIR"),
			 (int)getpid());
		uint8_t secret[MICA_UVTLS_TICKET_SECRET_LEN];
		ck_assert_int_eq(mica_random(secret, sizeof(secret)), 0);
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(write(fd, secret, sizeof(secret)), (ssize_t)sizeof(secret));
		close(fd);
	}
	int port = 0;
	pid_t a = fork_server(&port, _i == 0 ? path : NULL);
	pid_t b = fork_server(&port, _i == 0 ? path : NULL);
	uv_loop_t loop;
	uv_loop_init(&loop);
	SSL_CTX *ctx = client_ctx(0);
	struct cli first = {0}, second = {0};
	int tries = 0;
	SSL_SESSION *none = NULL;
	connect_to_pid(&loop, ctx, port, a, &none, &first, &tries);
	ck_assert_int_eq(mica_uvtls_write(first.c, "x", 1), 0);
	ck_assert(run_until_rx(&loop, &first, first.rx_len + 1, 5000));
	ck_assert_ptr_nonnull(first.sess);
	SSL_SESSION *sess = first.sess;
	first.sess = NULL;
	connect_to_pid(&loop, ctx, port, b, &sess, &second, &tries);
	if (_i == 0)
		ck_assert_msg(second.reused, "a session from pid %d did not resume on pid %d",
			      (int)a, (int)b);
	else
		ck_assert_msg(!second.reused, "resumed without a shared ticket secret");
	SSL_SESSION_free(sess);
	cli_finish(&loop, &second);
	cli_finish(&loop, &first);
	SSL_CTX_free(ctx);
	loop_finish(&loop);
	kill(a, SIGKILL);
	kill(b, SIGKILL);
	waitpid(a, NULL, 0);
	waitpid(b, NULL, 0);
	if (_i == 0)
		unlink(path);
}
END_TEST

START_TEST(bad_configuration_is_refused)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/uvtls-short-%d", env("MICA_TEST_DIR"), (int)getpid());
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, "short", 5), 5);
	close(fd);
	uv_loop_t loop;
	uv_loop_init(&loop);
	mica_uvtls_server_options o = {.host = "127.0.0.1",
				       .cert_file = env("MICA_CERT_SERVER"),
				       .key_file = env("MICA_KEY_SERVER"),
				       .ticket_secret_file = path};
	mica_uvtls_server *s = (mica_uvtls_server *)&o;
	ck_assert_int_eq(mica_uvtls_server_new(&loop, &o, &srv_cb, NULL, &s), MICA_ECONFIG);
	ck_assert_ptr_null(s);
	o.ticket_secret_file = "/nonexistent/ticket";
	ck_assert_int_eq(mica_uvtls_server_new(&loop, &o, &srv_cb, NULL, &s), MICA_ECONFIG);
	o.ticket_secret_file = NULL;
	o.key_file = env("MICA_KEY_ROGUE");
	ck_assert_int_eq(mica_uvtls_server_new(&loop, &o, &srv_cb, NULL, &s), MICA_ECONFIG);
	o.key_file = env("MICA_KEY_SERVER");
	o.host = "not-an-address";
	ck_assert_int_eq(mica_uvtls_server_new(&loop, &o, &srv_cb, NULL, &s), MICA_EINVAL);
	/* A port in use, without SO_REUSEPORT on both sides. */
	o.host = "127.0.0.1";
	mica_uvtls_server *first;
	ck_assert_int_eq(mica_uvtls_server_new(&loop, &o, &srv_cb, NULL, &first), 0);
	o.port = mica_uvtls_server_port(first);
	ck_assert_int_eq(mica_uvtls_server_new(&loop, &o, &srv_cb, NULL, &s), MICA_EIO);
	ck_assert_ptr_null(s);
	o.reuseport = true;
	ck_assert_int_eq(mica_uvtls_server_new(&loop, &o, &srv_cb, NULL, &s), MICA_EIO);
	mica_uvtls_server_free(first);
	unlink(path);
	loop_finish(&loop);
}
END_TEST

START_TEST(backpressure_counts_pending_bytes)
{
	struct srv v = {.flood = 24u << 20};
	srv_start(&v);
	SSL_CTX *ctx;
	int fd;
	/* A peer with a small receive buffer that reads nothing for a while. */
	SSL *ssl = raw_tls(v.port, &ctx, &fd, 4096);
	for (int i = 0; i < 2000 && atomic_load(&v.written) < v.flood; i++)
		usleep(1000);
	ck_assert_uint_eq(atomic_load(&v.written), v.flood);
	size_t maxp = atomic_load(&v.max_pending);
	ck_assert_msg(maxp > (8u << 20), "pending peaked at %zu bytes", maxp);
	ck_assert_int_eq(atomic_load(&v.drains), 0);
	/* Now read everything: the bytes arrive in order and the server drains. */
	size_t got = 0;
	uint8_t buf[16384];
	while (got < v.flood) {
		int n = SSL_read(ssl, buf, sizeof(buf));
		ck_assert_int_gt(n, 0);
		/* One assertion per record: Check marks every assertion it passes. */
		bool same = true;
		for (int i = 0; i < n; i++)
			same &= buf[i] == (uint8_t)((got + (size_t)i) * 7 + 1);
		ck_assert_msg(same, "the bytes after offset %zu differ", got);
		got += (size_t)n;
	}
	for (int i = 0; i < 3000 && atomic_load(&v.drains) == 0; i++)
		usleep(1000);
	ck_assert_int_eq(atomic_load(&v.drains), 1);
	ck_assert_uint_eq(atomic_load(&v.pending_at_drain), 0);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	srv_join(&v);
}
END_TEST

START_TEST(client_refuses_a_certificate_from_another_ca)
{
	struct srv v = {0};
	srv_start(&v);
	uv_loop_t loop;
	uv_loop_init(&loop);
	SSL_CTX *ctx;
	ck_assert_int_eq(mica_uvtls_client_ctx_new(env("MICA_CA_ROGUE"), NULL, NULL, &ctx), 0);
	struct cli k = {0};
	mica_uvtls_connect_options o = {.host = "127.0.0.1", .port = v.port};
	ck_assert_int_eq(mica_uvtls_connect(&loop, ctx, &o, &cli_cb, &k, &k.c), 0);
	ck_assert(run_until(&loop, &k.closed, 5000));
	ck_assert(!k.open);
	ck_assert_int_eq(k.reason, MICA_UVTLS_CLOSED_TLS);
	/* Connection refused: nothing listens on the port any more. */
	memset(&k, 0, sizeof(k));
	o.port = 1;
	ck_assert_int_eq(mica_uvtls_connect(&loop, ctx, &o, &cli_cb, &k, &k.c), 0);
	ck_assert(run_until(&loop, &k.closed, 5000));
	ck_assert_int_eq(k.reason, MICA_UVTLS_CLOSED_IO);
	SSL_CTX_free(ctx);
	loop_finish(&loop);
	srv_join(&v);
}
END_TEST

/* ---- Detached connections ------------------------------------------------ */

/* Runs |loop| for |ms| milliseconds (the server detaches meanwhile). */
static void run_for(uv_loop_t *loop, int ms)
{
	double end = now_s() + ms / 1000.0;
	while (now_s() < end)
		run_a_bit(loop, 5000);
}

/* Sends |msg| and waits for its echo after what |k| already received. */
static void echo_round(uv_loop_t *loop, struct cli *k, const char *msg)
{
	size_t before = k->rx_len, n = strlen(msg);
	ck_assert_int_eq(mica_uvtls_write(k->c, msg, n), 0);
	ck_assert_msg(run_until_rx(loop, k, before + n, 5000), "no echo of %s (closed: %s)", msg,
		      k->closed ? mica_uvtls_close_name(k->reason) : "no");
	ck_assert_int_eq(memcmp(k->rx + before, msg, n), 0);
}

/* Counts the KeyUpdate messages a client SSL receives. */
static int key_updates_received;
static void count_key_updates(int write_p, int version, int content_type, const void *buf,
			      size_t len, SSL *ssl, void *arg)
{
	(void)version;
	(void)ssl;
	(void)arg;
	if (!write_p && content_type == SSL3_RT_HANDSHAKE && len >= 1 &&
	    ((const uint8_t *)buf)[0] == SSL3_MT_KEY_UPDATE)
		key_updates_received++;
}

START_TEST(detached_connection_carries_records)
{
	struct srv v = {.detach_ms = 250};
	srv_start(&v);
	uv_loop_t loop;
	uv_loop_init(&loop);
	SSL_CTX *ctx = client_ctx(0);
	struct cli k = {0};
	cli_connect(&loop, ctx, v.port, NULL, NULL, &k);
	ck_assert_str_eq(k.version, "TLSv1.3");
	echo_round(&loop, &k, "attached");
	ck_assert_int_eq(atomic_load(&v.data_attached), 1);
	/* Quiet for 250 ms (a tick or two of the wheel): detached. */
	run_for(&loop, 900);
	echo_round(&loop, &k, "detached");
	ck_assert_int_eq(atomic_load(&v.data_detached), 1);
	ck_assert_int_eq(atomic_load(&v.data_attached), 1);
	/* One server write of 100 KB: split into records the client accepts. */
	size_t before = k.rx_len;
	ck_assert_int_eq(mica_uvtls_write(k.c, "BIG", 3), 0);
	ck_assert(run_until_rx(&loop, &k, before + BIG_LEN, 10000));
	ck_assert_uint_eq(k.rx_len, before + BIG_LEN);
	for (size_t i = 0; i < BIG_LEN; i++)
		ck_assert_uint_eq(k.rx[before + i], big_byte(i));
	/* 1 MiB from the client: many records, partial reads on the server. */
	size_t big = (1u << 20) + 777;
	uint8_t *buf = malloc(big);
	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(mica_random(buf, big), 0);
	before = k.rx_len;
	ck_assert_int_eq(mica_uvtls_write(k.c, buf, big), 0);
	ck_assert(run_until_rx(&loop, &k, before + big, 20000));
	ck_assert_int_eq(memcmp(k.rx + before, buf, big), 0);
	free(buf);
	/* The client asks for a KeyUpdate (OpenSSL sends it before its next
	 * record); the server updates its read keys, answers with its own
	 * KeyUpdate and writes under new keys, which the client follows. */
	SSL_set_msg_callback(mica_uvtls_ssl(k.c), count_key_updates);
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(
			SSL_key_update(mica_uvtls_ssl(k.c), i == 0 ? SSL_KEY_UPDATE_REQUESTED
								   : SSL_KEY_UPDATE_NOT_REQUESTED),
			1);
		echo_round(&loop, &k, i == 0 ? "after a requested update" : "after an update");
		ck_assert_int_eq(key_updates_received, 1); /* only the requested one answered */
	}
	ck_assert_int_eq(atomic_load(&v.open_without_ssl), 0);
	/* close_notify from the client: the detached server closes as "peer". */
	cli_finish(&loop, &k);
	wait_closed(&v, MICA_UVTLS_CLOSED_PEER, 1, 3000);
	ck_assert_int_eq(atomic_load(&v.closed[MICA_UVTLS_CLOSED_TLS]), 0);
	SSL_CTX_free(ctx);
	loop_finish(&loop);
	srv_join(&v);
}
END_TEST

/* A KeyUpdate while the SSL object still runs the connection changes keys
 * the capture did not follow: that connection stays attached, and works. */
START_TEST(key_update_before_detaching_keeps_openssl)
{
	struct srv v = {.detach_ms = 250};
	srv_start(&v);
	uv_loop_t loop;
	uv_loop_init(&loop);
	SSL_CTX *ctx = client_ctx(0);
	struct cli k = {0};
	cli_connect(&loop, ctx, v.port, NULL, NULL, &k);
	ck_assert_int_eq(SSL_key_update(mica_uvtls_ssl(k.c), SSL_KEY_UPDATE_REQUESTED), 1);
	echo_round(&loop, &k, "updated while attached");
	run_for(&loop, 900);
	echo_round(&loop, &k, "still attached");
	ck_assert_int_eq(atomic_load(&v.data_attached), 2);
	ck_assert_int_eq(atomic_load(&v.data_detached), 0);
	/* A second connection on the same server detaches as usual. */
	struct cli k2 = {0};
	cli_connect(&loop, ctx, v.port, NULL, NULL, &k2);
	run_for(&loop, 900);
	echo_round(&loop, &k2, "detached");
	ck_assert_int_eq(atomic_load(&v.data_detached), 1);
	cli_finish(&loop, &k);
	cli_finish(&loop, &k2);
	wait_closed(&v, MICA_UVTLS_CLOSED_PEER, 2, 3000);
	SSL_CTX_free(ctx);
	loop_finish(&loop);
	srv_join(&v);
}
END_TEST

/* The idle timeout (the MQTT keepalive) keeps counting records after
 * detaching: a record resets it, silence closes. */
START_TEST(idle_timeout_applies_to_detached_connections)
{
	struct srv v = {.detach_ms = 250, .idle_ms = 1500};
	srv_start(&v);
	uv_loop_t loop;
	uv_loop_init(&loop);
	SSL_CTX *ctx = client_ctx(0);
	struct cli k = {0};
	cli_connect(&loop, ctx, v.port, NULL, NULL, &k);
	run_for(&loop, 900);
	echo_round(&loop, &k, "detached, alive");
	run_for(&loop, 900);
	echo_round(&loop, &k, "still alive");
	ck_assert_int_eq(atomic_load(&v.data_detached), 2);
	ck_assert_int_eq(atomic_load(&v.closed[MICA_UVTLS_CLOSED_IDLE_TIMEOUT]), 0);
	ck_assert(run_until(&loop, &k.closed, 5000));
	wait_closed(&v, MICA_UVTLS_CLOSED_IDLE_TIMEOUT, 1, 3000);
	cli_finish(&loop, &k);
	SSL_CTX_free(ctx);
	loop_finish(&loop);
	srv_join(&v);
}
END_TEST

/* The next record |ssl| writes for |data|, taken from a memory BIO instead
 * of its socket: the test then sends it as it likes. */
static size_t record_of(SSL *ssl, const char *data, uint8_t *out, size_t cap)
{
	BIO *mem = BIO_new(BIO_s_mem());
	ck_assert_ptr_nonnull(mem);
	BIO *sock = SSL_get_wbio(ssl);
	BIO_up_ref(sock);
	SSL_set0_wbio(ssl, mem);
	ck_assert_int_eq(SSL_write(ssl, data, (int)strlen(data)), (int)strlen(data));
	int n = BIO_read(mem, out, (int)cap);
	ck_assert_int_gt(n, 0);
	SSL_set0_wbio(ssl, sock);
	return (size_t)n;
}

START_TEST(detached_connection_refuses_an_altered_record)
{
	struct srv v = {.detach_ms = 250};
	srv_start(&v);
	SSL_CTX *ctx;
	int fd;
	SSL *ssl = raw_tls(v.port, &ctx, &fd, 0);
	ck_assert_int_eq(SSL_write(ssl, "ok", 2), 2);
	char b[64];
	ck_assert_int_eq(SSL_read(ssl, b, 2), 2);
	usleep(900000);
	/* A genuine record sent a byte at a time is reassembled. */
	uint8_t rec[256];
	size_t n = record_of(ssl, "dribbled", rec, sizeof(rec));
	for (size_t i = 0; i < n; i++) {
		ck_assert_int_eq(write(fd, rec + i, 1), 1);
		usleep(2000);
	}
	ck_assert_int_eq(SSL_read(ssl, b, sizeof(b)), 8);
	ck_assert_int_eq(memcmp(b, "dribbled", 8), 0);
	ck_assert_int_eq(atomic_load(&v.data_detached), 1);
	/* The next genuine record with one ciphertext bit flipped: the server
	 * answers bad_record_mac (sealed under its keys: the client reads it)
	 * and closes as a TLS failure. */
	n = record_of(ssl, "altered", rec, sizeof(rec));
	rec[n - 20] ^= 0x04;
	ck_assert_int_eq(write(fd, rec, n), (ssize_t)n);
	ERR_clear_error();
	ck_assert_int_le(SSL_read(ssl, b, sizeof(b)), 0);
	ck_assert_int_eq(ERR_GET_REASON(ERR_peek_error()), SSL_R_SSLV3_ALERT_BAD_RECORD_MAC);
	wait_closed(&v, MICA_UVTLS_CLOSED_TLS, 1, 3000);
	ck_assert_int_eq(atomic_load(&v.data_detached), 1);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	/* A record of another type in the clear (a plaintext alert) after
	 * detaching: refused too. */
	ssl = raw_tls(v.port, &ctx, &fd, 0);
	ck_assert_int_eq(SSL_write(ssl, "ok", 2), 2);
	ck_assert_int_eq(SSL_read(ssl, b, 2), 2);
	usleep(900000);
	static const uint8_t plain_alert[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28};
	ck_assert_int_eq(write(fd, plain_alert, sizeof(plain_alert)), (ssize_t)sizeof(plain_alert));
	ck_assert(wait_eof(fd, 3000) >= 0);
	wait_closed(&v, MICA_UVTLS_CLOSED_TLS, 2, 3000);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	echo_still_works(v.port);
	srv_join(&v);
}
END_TEST

static Suite *uvtls_suite(void)
{
	Suite *s = suite_create("uvtls");
	TCase *tc = tcase_create("uvtls");
	tcase_add_test(tc, echo_small_and_large);
	tcase_add_test(tc, garbage_instead_of_client_hello);
	tcase_add_test(tc, corrupt_record_after_handshake);
	tcase_add_test(tc, handshake_timeout_closes_silent_and_dribbling_peers);
	tcase_add_test(tc, idle_timeout_closes_a_silent_connection_only);
	tcase_add_test(tc, session_resumes_tls13);
	tcase_add_test(tc, session_resumes_tls12);
	tcase_add_loop_test(tc, reuseport_workers_resume_each_others_sessions, 0, 2);
	tcase_add_test(tc, bad_configuration_is_refused);
	tcase_add_test(tc, backpressure_counts_pending_bytes);
	tcase_add_test(tc, client_refuses_a_certificate_from_another_ca);
	tcase_add_test(tc, detached_connection_carries_records);
	tcase_add_test(tc, detached_connection_refuses_an_altered_record);
	tcase_add_test(tc, key_update_before_detaching_keeps_openssl);
	tcase_add_test(tc, idle_timeout_applies_to_detached_connections);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	return s;
}

/* libuv writes with write(2): a peer that hung up must not kill the test
 * with SIGPIPE (every mica program ignores it, as lib/uvtls.h says). */
static int ignore_sigpipe(void)
{
	return signal(SIGPIPE, SIG_IGN) == SIG_ERR;
}

static const char *const needs[] = {"MICA_CA",
				    "MICA_CERT_SERVER",
				    "MICA_KEY_SERVER",
				    "MICA_CA_ROGUE",
				    "MICA_KEY_ROGUE",
				    "MICA_TEST_DIR",
				    NULL};

const struct mica_check mica_check = {.suite = uvtls_suite,
				      .needs = needs,
				      .setup = ignore_sigpipe,
				      .log = MICA_CHECK_LOG_ERRORS};
