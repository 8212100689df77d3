/* bare_mhd.c - the baseline for bench/http: the least a libmicrohttpd HTTPS
 * server can do to answer GET /v1/hello with a small JSON body, with the same
 * TLS priorities, epoll and thread-pool settings as libmica's http module.
 * Usage: bare_mhd CERT KEY PORT_FILE THREADS */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char body[] = "{\"hello\":\"world\"}";

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url,
			      const char *method, const char *version, const char *upload,
			      size_t *upload_size, void **con_cls)
{
	struct MHD_Response *r;
	enum MHD_Result ret;
	static int first_call_marker;
	(void)cls, (void)url, (void)method, (void)version, (void)upload, (void)upload_size;
	/* As libmicrohttpd's own examples do: answer on the second call, once
	 * the request is complete, so the connection stays alive. */
	if (*con_cls != &first_call_marker) {
		*con_cls = &first_call_marker;
		return MHD_YES;
	}
	r = MHD_create_response_from_buffer(sizeof(body) - 1, (void *)body, MHD_RESPMEM_PERSISTENT);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	return ret;
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "rb");
	static char buf[2][16384];
	static int which;
	char *b = buf[which++ & 1];
	size_t n;
	if (!f)
		exit(1);
	n = fread(b, 1, sizeof(buf[0]) - 1, f);
	b[n] = '\0';
	fclose(f);
	return b;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	struct MHD_Daemon *d;
	FILE *f;
	sigset_t set;
	int sig;

	if (argc != 5) {
		fprintf(stderr, "usage: bare_mhd CERT KEY PORT_FILE THREADS\n");
		return 2;
	}
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	d = MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_TLS, 0, NULL, NULL, answer,
			     NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
			     MHD_OPTION_HTTPS_MEM_CERT, slurp(argv[1]), MHD_OPTION_HTTPS_MEM_KEY,
			     slurp(argv[2]), MHD_OPTION_HTTPS_PRIORITIES,
			     "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2",
			     MHD_OPTION_THREAD_POOL_SIZE, (unsigned)atoi(argv[4]),
			     MHD_OPTION_CONNECTION_LIMIT, 1024u, MHD_OPTION_END);
	if (!d)
		return 1;
	if (!(f = fopen(argv[3], "w")))
		return 1;
	fprintf(f, "%u\n", MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port);
	fclose(f);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sigwait(&set, &sig);
	MHD_stop_daemon(d);
	return 0;
}
