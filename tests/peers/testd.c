/* testd.c - a small HTTPS daemon on libmica's http module, used by the
 * integration tests (tests/integration/test_http.sh) and as the framework
 * side of bench/http. Routes exercise params, JSON bodies and mTLS peers.
 * Usage: testd CONFIG  (sections [log] and [testd.http], see testd_table). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "daemon.h"
#include "http.h"
#include "log.h"

struct testd_config {
	int log_level;
	mica_http_options http;
	char *port_file;
	char *metrics_port_file;
};

static const mica_config_entry testd_table[] = {
	{"log", "level", MICA_CFG_LOGLEVEL, 0, 4, "info", offsetof(struct testd_config, log_level),
	 "least severe level written (debug, info, warn, error, off)"},
	MICA_CONFIG_HTTP_ENTRIES("testd.http", struct testd_config, http, "0"),
	{"testd", "port_file", MICA_CFG_STRING, 0, 4096, "",
	 offsetof(struct testd_config, port_file),
	 "file the bound port is written to once listening"},
	{"testd", "metrics_port_file", MICA_CFG_STRING, 0, 4096, "",
	 offsetof(struct testd_config, metrics_port_file),
	 "file the metrics listener's port is written to once listening"},
};

static void hello(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)req;
	(void)ctx;
	mica_http_reply_json(resp, 200, json_pack("{s:s}", "hello", "world"));
}

static void echo(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)ctx;
	mica_http_reply_json(resp, 200, json_incref(req->json));
}

static void whoami(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)ctx;
	mica_http_reply_json(resp, 200, json_pack("{s:s}", "principal", req->peer));
}

/* Ids are positive int64: a malformed one and one out of range (also
 * beyond int64) get 400s that say which. */
static void item_get(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	int64_t id;
	(void)ctx;
	switch (mica_http_param_int64(req, "id", 1, INT64_MAX, &id)) {
	case 0:
		mica_http_reply_json(resp, 200, json_pack("{s:I}", "id", (json_int_t)id));
		break;
	case MICA_ERANGE:
		mica_http_reply_error(resp, 400, "item_id_out_of_range",
				      "item ids are 1..9223372036854775807");
		break;
	default:
		mica_http_reply_error(resp, 400, "bad_item_id", "item ids are decimal integers");
	}
}

static void item_delete(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)ctx;
	mica_http_reply_json(
		resp, 200, json_pack("{s:s,s:b}", "id", mica_http_param(req, "id"), "deleted", 1));
}

static const mica_http_route routes[] = {
	{"GET", "/v1/hello", hello, 0},
	{"POST", "/v1/echo", echo, MICA_ROUTE_JSON},
	{"GET", "/v1/whoami", whoami, MICA_ROUTE_PEER},
	{"GET", "/v1/items/{id}", item_get, 0},
	{"DELETE", "/v1/items/{id}", item_delete, 0},
};

/* Writes |port| to |path| (nothing for ""), atomically. */
static int write_port(const char *path, int port)
{
	char tmp[4200];
	FILE *f;
	if (!path[0])
		return 0;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (!f || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0 || rename(tmp, path) != 0) {
		fprintf(stderr, "testd: cannot write %s\n", path);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct testd_config cfg = {0};
	size_t n = sizeof(testd_table) / sizeof(testd_table[0]);
	mica_http_server *srv = NULL;
	char err[512];
	int rc = 1;

	mica_daemon_block_signals();
	if (argc == 2 && strcmp(argv[1], "--print-config") == 0) {
		mica_config_write_example(stdout, testd_table, n);
		return 0;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: testd CONFIG | --print-config\n");
		return 2;
	}
	if (mica_config_load(testd_table, n, &cfg, argv[1], err, sizeof(err)) != 0) {
		fprintf(stderr, "testd: %s\n", err);
		rc = 2;
		goto out;
	}
	mica_log_min_level = cfg.log_level;
	cfg.http.service = "testd";
	if (mica_http_start(&srv, &cfg.http, routes, sizeof(routes) / sizeof(routes[0]), NULL) != 0)
		goto out;
	/* The metrics port first: a script waits for port_file, then reads both. */
	if (write_port(cfg.metrics_port_file, mica_http_metrics_port(srv)) != 0 ||
	    write_port(cfg.port_file, mica_http_port(srv)) != 0)
		goto out;
	mica_daemon_wait_signal();
	rc = 0;
out:
	mica_http_stop(srv);
	mica_config_free(testd_table, n, &cfg);
	return rc;
}
