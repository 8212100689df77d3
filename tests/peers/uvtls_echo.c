/* uvtls_echo.c - a TLS echo server on lib/uvtls, the peer of
 * tests/integration/test_uvtls.sh (openssl s_client, a client nobody here
 * wrote, against the transport). Every received chunk is written back; a
 * chunk ending in "BYE\n" closes the connection after its echo, so a client
 * reading until EOF ends cleanly.
 *
 * Usage: uvtls_echo CERT KEY PORT_FILE [PORT [TICKET_SECRET_FILE [reuseport]]]
 * The bound port is written to PORT_FILE once listening. Runs until killed.
 * UVTLS_ECHO_DETACH_MS in the environment sets detach_idle_ms; every chunk
 * received is then logged (stderr) with whether the connection had
 * detached ("echo N bytes detached=0|1"), and each connection's protocol
 * version at on_open. A chunk "BIG\n" is answered, instead of echoed, with
 * 40,000 bytes in one mica_uvtls_write: 5,714 times "BIGDATA" and "\n\n".
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "thread.h"
#include "uvtls.h"

static bool verbose;

static void on_open(mica_uvtls_conn *c)
{
	if (verbose)
		MICA_LOG(MICA_LOG_INFO, "uvtls_echo: open %s", SSL_get_version(mica_uvtls_ssl(c)));
}

static void on_data(mica_uvtls_conn *c, const uint8_t *d, size_t n)
{
	if (verbose)
		MICA_LOG(MICA_LOG_INFO, "uvtls_echo: echo %zu bytes detached=%d", n,
			 mica_uvtls_detached(c));
	if (n == 4 && memcmp(d, "BIG\n", 4) == 0) {
		static char big[40000];
		for (size_t i = 0; i + 7 <= sizeof(big) - 2; i += 7)
			memcpy(big + i, "BIGDATA", 7);
		big[sizeof(big) - 2] = big[sizeof(big) - 1] = '\n';
		if (mica_uvtls_write(c, big, sizeof(big)) != 0)
			mica_uvtls_close(c);
		return;
	}
	if (mica_uvtls_write(c, d, n) != 0 || (n >= 4 && memcmp(d + n - 4, "BYE\n", 4) == 0))
		mica_uvtls_close(c);
}

static void on_close(mica_uvtls_conn *c, mica_uvtls_close_reason r)
{
	(void)c;
	MICA_LOG(MICA_LOG_INFO, "uvtls_echo: connection closed: %s", mica_uvtls_close_name(r));
}

int main(int argc, char **argv)
{
	if (argc < 4 || argc > 7) {
		fprintf(stderr, "usage: uvtls_echo CERT KEY PORT_FILE [PORT [TICKET_SECRET_FILE "
				"[reuseport]]]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	uv_loop_t loop;
	uv_loop_init(&loop);
	mica_thread_set_event(true);
	mica_uvtls_server_options o = {
		.host = "127.0.0.1",
		.port = argc > 4 ? atoi(argv[4]) : 0,
		.cert_file = argv[1],
		.key_file = argv[2],
		.ticket_secret_file = argc > 5 && argv[5][0] ? argv[5] : NULL,
		.reuseport = argc > 6 && strcmp(argv[6], "reuseport") == 0,
	};
	const char *detach = getenv("UVTLS_ECHO_DETACH_MS");
	if (detach && *detach) {
		o.detach_idle_ms = (unsigned)atoi(detach);
		verbose = true;
	}
	mica_uvtls_callbacks cb = {.on_open = on_open, .on_data = on_data, .on_close = on_close};
	mica_uvtls_server *s;
	int r = mica_uvtls_server_new(&loop, &o, &cb, NULL, &s);
	if (r != 0) {
		fprintf(stderr, "uvtls_echo: %s\n", mica_strerror(r));
		return 1;
	}
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s.tmp", argv[3]);
	FILE *f = fopen(tmp, "w");
	if (!f || fprintf(f, "%d\n", mica_uvtls_server_port(s)) < 0 || fclose(f) != 0 ||
	    rename(tmp, argv[3]) != 0) {
		fprintf(stderr, "uvtls_echo: cannot write %s\n", argv[3]);
		return 1;
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	return 0;
}
