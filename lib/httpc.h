/* httpc.h - HTTPS client for service-to-service calls (libcurl).
 *
 * A mica_httpc is one thread's client: it keeps its connections alive between
 * calls (a small per-handle pool), presents a client certificate for mutual
 * TLS, verifies the server against a CA file, enforces connect and total
 * timeouts, offers only AEAD TLS suites (MICA_TLS12_CIPHERS, TLS 1.3), and
 * retries idempotent calls with jittered exponential backoff on
 * transport errors and 502/503/504. Non-idempotent calls are never retried.
 * A handle must not be shared between threads; make one per thread.
 * Every call blocks, so on an event thread (lib/thread.h) each answers
 * MICA_EWOULDBLOCK at once, before any I/O. Response bodies are wiped when
 * released (mica_httpc_resp_cleanup, and every block the body outgrew).
 */
#ifndef MICA_HTTPC_H
#define MICA_HTTPC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "err.h"

/* The TLS suites the client offers (OpenSSL names): TLS 1.3, and TLS 1.2
 * only with ECDHE and AES-GCM or ChaCha20-Poly1305, as the server. Any
 * other libcurl user in mica (SMTP, webhooks) should set the same. */
#define MICA_TLS12_CIPHERS                                                                         \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                               \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                               \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define MICA_TLS13_CIPHERS                                                                         \
	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

typedef struct mica_httpc_options {
	const char *ca_file;	 /* PEM CA the server must chain to (required) */
	const char *cert_file;	 /* PEM client certificate, or NULL */
	const char *key_file;	 /* PEM client key, or NULL */
	long connect_timeout_ms; /* default 2000 */
	long timeout_ms;	 /* whole request, default 10000 */
	int retries;		 /* extra attempts for idempotent calls, default 2 */
	long backoff_ms;	 /* first backoff, doubled each retry, +-50% jitter; default 50 */
	/* Connect only to public unicast addresses, whatever the URL's host
	 * resolves to, and ignore proxies named by the environment: for URLs
	 * that someone outside names (webhooks), so that they cannot make the
	 * service reach loopback, private, link-local or other internal
	 * addresses. A refused address is MICA_EDENIED, never retried. */
	bool public_only;
} mica_httpc_options;

typedef struct mica_httpc mica_httpc;

typedef struct mica_httpc_resp {
	long status; /* HTTP status, 0 if no response */
	char *body;  /* NUL-terminated, malloc'd; wiped and freed by
			mica_httpc_resp_cleanup */
	size_t body_len;
	int attempts; /* how many tries were made */
} mica_httpc_resp;

/* Creates a client; copies every string in |opt|. MICA_EINVAL without a CA,
 * MICA_ENOMEM, MICA_EHTTP if libcurl cannot be set up. */
int mica_httpc_new(mica_httpc **out, const mica_httpc_options *opt) MICA_WUR;
void mica_httpc_free(mica_httpc *c);
/* True if |sa| (AF_INET or AF_INET6) is a public unicast address: not
 * unspecified, loopback, private (RFC 1918, shared 100.64/10, unique-local
 * fc00::/7), link-local, site-local, multicast, reserved or documentation,
 * nor an IPv4 address of those kinds inside IPv4-mapped, NAT64 or 6to4
 * IPv6 addresses. Teredo (2001::/32) is not public either. */
bool mica_addr_public(const struct sockaddr *sa);

/* Performs one request. |body| may be NULL; it is sent as application/json.
 * |idempotent| allows retries (GET, PUT, DELETE, or a POST the server treats
 * as idempotent). Returns 0 when an HTTP response arrived (any status; see
 * out->status), MICA_ETIMEOUT, MICA_ETLS (the server's certificate is not
 * trusted or a local certificate/CA file is unusable; never retried),
 * MICA_EHTTP (other transport failure), MICA_ETOOBIG (response over 16 MiB),
 * MICA_EWOULDBLOCK (called on an event thread; nothing was sent).
 * Call mica_httpc_resp_cleanup(out) in every case. */
int mica_httpc_request(mica_httpc *c, const char *method, const char *url, const char *body,
		       size_t body_len, int idempotent, mica_httpc_resp *out) MICA_WUR;

/* JSON convenience: sends |req| (borrowed, may be NULL), parses the reply.
 * *out_json is set (caller decrefs) when the body is JSON; MICA_EBADHEADER if
 * a non-empty body is not JSON. Same other codes as mica_httpc_request. */
int mica_httpc_json(mica_httpc *c, const char *method, const char *url, json_t *req, int idempotent,
		    long *status, json_t **out_json) MICA_WUR;

void mica_httpc_resp_cleanup(mica_httpc_resp *r);

#endif
