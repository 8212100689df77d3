/* httpc.c - libcurl-based HTTPS client with mTLS, keep-alive, timeouts and
 * retries for idempotent calls (see httpc.h). */
#include "httpc.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "crypto.h"
#include "log.h"
#include "thread.h"

#define MAX_RESPONSE (16u << 20)

struct mica_httpc {
	CURL *curl;
	struct curl_slist *headers;
	mica_httpc_options opt;
	char *ca, *cert, *key;
	char errbuf[CURL_ERROR_SIZE];
	bool refused; /* the last transfer met an address that is not public */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_global(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

void mica_httpc_free(mica_httpc *c)
{
	if (!c)
		return;
	if (c->curl)
		curl_easy_cleanup(c->curl);
	curl_slist_free_all(c->headers);
	free(c->ca);
	free(c->cert);
	free(c->key);
	free(c);
}

int mica_httpc_new(mica_httpc **out, const mica_httpc_options *opt)
{
	mica_httpc *c;
	*out = NULL;
	if (!opt || !opt->ca_file || !*opt->ca_file || (!opt->cert_file != !opt->key_file))
		return MICA_EINVAL;
	pthread_once(&curl_once, curl_global);
	if (!(c = calloc(1, sizeof(*c))))
		return MICA_ENOMEM;
	c->opt = *opt;
	if (!c->opt.connect_timeout_ms)
		c->opt.connect_timeout_ms = 2000;
	if (!c->opt.timeout_ms)
		c->opt.timeout_ms = 10000;
	if (!c->opt.backoff_ms)
		c->opt.backoff_ms = 50;
	if (c->opt.retries < 0)
		c->opt.retries = 0;
	if (!(c->ca = strdup(opt->ca_file)) ||
	    (opt->cert_file && !(c->cert = strdup(opt->cert_file))) ||
	    (opt->key_file && !(c->key = strdup(opt->key_file)))) {
		mica_httpc_free(c);
		return MICA_ENOMEM;
	}
	c->headers = curl_slist_append(NULL, "Content-Type: application/json");
	c->headers = c->headers ? curl_slist_append(c->headers, "Expect:") : NULL;
	if (!c->headers || !(c->curl = curl_easy_init())) {
		mica_httpc_free(c);
		return MICA_EHTTP;
	}
	*out = c;
	return 0;
}

void mica_httpc_resp_cleanup(mica_httpc_resp *r)
{
	if (!r)
		return;
	mica_free_wipe(r->body); /* may hold a session or a data key */
	r->body = NULL;
	r->body_len = 0;
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	mica_httpc_resp *r = userdata;
	size_t n = size * nmemb;
	size_t need = r->body_len + n + 1;
	if (r->body_len + n > MAX_RESPONSE)
		return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
	/* Grown by doubling, and through mica_realloc_wipe, which returns the
	 * same block while it is big enough and wipes the block it leaves:
	 * the body may be a data key in plaintext. */
	char *grown = mica_realloc_wipe(r->body, need < 2 * r->body_len ? 2 * r->body_len : need);
	if (!grown)
		return 0;
	r->body = grown;
	memcpy(r->body + r->body_len, ptr, n);
	r->body_len += n;
	r->body[r->body_len] = '\0';
	return n;
}

/* ---- public addresses (mica_httpc_options.public_only) ------------------- */

static bool v4_public(uint32_t a)
{
	static const struct {
		uint32_t net;
		int bits;
	} deny[] = {
		{0x00000000, 8},  /* "this network" */
		{0x0a000000, 8},  /* private */
		{0x64400000, 10}, /* shared address space (carrier-grade NAT) */
		{0x7f000000, 8},  /* loopback */
		{0xa9fe0000, 16}, /* link-local */
		{0xac100000, 12}, /* private */
		{0xc0000000, 24}, /* IETF protocol assignments */
		{0xc0000200, 24}, /* documentation */
		{0xc0a80000, 16}, /* private */
		{0xc6120000, 15}, /* benchmarking */
		{0xc6336400, 24}, /* documentation */
		{0xcb007100, 24}, /* documentation */
		{0xe0000000, 4},  /* multicast */
		{0xf0000000, 4},  /* reserved, and the broadcast address */
	};
	for (size_t i = 0; i < sizeof(deny) / sizeof(deny[0]); i++)
		if ((a & (0xffffffffu << (32 - deny[i].bits))) == deny[i].net)
			return false;
	return true;
}

static uint32_t be32_at(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

bool mica_addr_public(const struct sockaddr *sa)
{
	if (!sa)
		return false;
	if (sa->sa_family == AF_INET)
		return v4_public(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
	if (sa->sa_family != AF_INET6)
		return false;
	const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b};
	static const uint8_t zero[15] = {0};
	if (memcmp(b, mapped, 12) == 0 || memcmp(b, nat64, 12) == 0)
		return v4_public(be32_at(b + 12));
	if (b[0] == 0x20 && b[1] == 0x02) /* 6to4: the IPv4 address follows */
		return v4_public(be32_at(b + 2));
	if (memcmp(b, zero, 15) == 0) /* :: and ::1 */
		return false;
	if ((b[0] & 0xfe) == 0xfc ||					/* unique-local fc00::/7 */
	    (b[0] == 0xfe && (b[1] & 0x80) == 0x80) ||			/* link- and site-local */
	    b[0] == 0xff ||						/* multicast */
	    (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0) || /* Teredo */
	    (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) || /* documentation */
	    (b[0] == 0x01 && b[1] == 0 && memcmp(b + 2, zero, 6) == 0))	      /* discard 100::/64 */
		return false;
	return true;
}

/* CURLOPT_OPENSOCKETFUNCTION of a public_only client: the address libcurl
 * is about to connect to, after every resolution, is the one checked, so a
 * name that resolves differently at each look gains nothing. */
static curl_socket_t open_public(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
	mica_httpc *c = clientp;
	(void)purpose;
	if (!mica_addr_public(&a->addr)) {
		c->refused = true;
		return CURL_SOCKET_BAD;
	}
	return socket(a->family, a->socktype, a->protocol);
}

static int map_curl_error(CURLcode cc, const mica_httpc_resp *r)
{
	switch (cc) {
	case CURLE_OPERATION_TIMEDOUT:
		return MICA_ETIMEOUT;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_CRL_BADFILE:
		return MICA_ETLS;
	case CURLE_WRITE_ERROR:
		return r->body_len >= MAX_RESPONSE ? MICA_ETOOBIG : MICA_ENOMEM;
	default:
		/* Includes CURLE_SSL_CONNECT_ERROR: a handshake cut short (a peer
		 * restarting, a reset) is a transport failure worth retrying;
		 * a certificate the client cannot trust is MICA_ETLS above. */
		return MICA_EHTTP;
	}
}

static void backoff(const mica_httpc *c, int attempt)
{
	unsigned int rnd = 0;
	long ms = c->opt.backoff_ms << (attempt < 10 ? attempt : 10);
	if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
		rnd = (unsigned)attempt * 2654435761u;
	ms = ms / 2 + (long)(rnd % (unsigned)(ms + 1)); /* 50%..150% */
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static int perform_once(mica_httpc *c, const char *method, const char *url, const char *body,
			size_t body_len, mica_httpc_resp *out)
{
	CURL *h = c->curl;
	CURLcode cc;

	mica_httpc_resp_cleanup(out);
	out->status = 0;
	curl_easy_reset(h); /* keeps the connection cache */
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https");
	curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_CAINFO, c->ca);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	/* The same suites the server offers (lib/http.c): a peer that can
	 * only do CBC or static RSA is refused at the handshake. */
	curl_easy_setopt(h, CURLOPT_SSL_CIPHER_LIST, MICA_TLS12_CIPHERS);
	curl_easy_setopt(h, CURLOPT_TLS13_CIPHERS, MICA_TLS13_CIPHERS);
	if (c->cert) {
		curl_easy_setopt(h, CURLOPT_SSLCERT, c->cert);
		curl_easy_setopt(h, CURLOPT_SSLKEY, c->key);
	}
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->opt.connect_timeout_ms);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->opt.timeout_ms);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, c->headers);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->errbuf);
	c->refused = false;
	if (c->opt.public_only) {
		curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, open_public);
		curl_easy_setopt(h, CURLOPT_OPENSOCKETDATA, c);
		curl_easy_setopt(h, CURLOPT_PROXY, ""); /* none from the environment */
	}
	if (body) {
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
	}
	c->errbuf[0] = '\0';
	cc = curl_easy_perform(h);
	/* An outside URL may carry its owner's token: it is not logged. */
	const char *shown = c->opt.public_only ? "(an outside URL)" : url;
	if (cc != CURLE_OK && c->refused) {
		MICA_LOG(MICA_LOG_WARN, "httpc: %s %s refused: its host is not a public address",
			 method, shown);
		return MICA_EDENIED;
	}
	if (cc != CURLE_OK) {
		MICA_LOG(MICA_LOG_WARN, "httpc: %s %s failed: %s", method, shown,
			 c->errbuf[0] ? c->errbuf : curl_easy_strerror(cc));
		return map_curl_error(cc, out);
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
	if (!out->body && !(out->body = calloc(1, 1)))
		return MICA_ENOMEM;
	return 0;
}

int mica_httpc_request(mica_httpc *c, const char *method, const char *url, const char *body,
		       size_t body_len, int idempotent, mica_httpc_resp *out)
{
	int err = MICA_EHTTP;
	int tries = idempotent ? c->opt.retries + 1 : 1;

	memset(out, 0, sizeof(*out));
	MICA_BLOCKING_ENTRY();
	for (int i = 0; i < tries; i++) {
		if (i > 0)
			backoff(c, i - 1);
		out->attempts = i + 1;
		err = perform_once(c, method, url, body, body_len, out);
		/* A TLS verification failure, or an address refused, will not
		 * heal by retrying. */
		if (err == MICA_ETLS || err == MICA_ETOOBIG || err == MICA_ENOMEM ||
		    err == MICA_EDENIED)
			break;
		if (err == 0 && out->status != 502 && out->status != 503 && out->status != 504)
			break;
	}
	return err;
}

int mica_httpc_json(mica_httpc *c, const char *method, const char *url, json_t *req, int idempotent,
		    long *status, json_t **out_json)
{
	mica_httpc_resp r;
	char *body = NULL;
	int err;

	*out_json = NULL;
	*status = 0;
	MICA_BLOCKING_ENTRY();
	if (req && !(body = json_dumps(req, JSON_COMPACT)))
		return MICA_ENOMEM;
	err = mica_httpc_request(c, method, url, body, body ? strlen(body) : 0, idempotent, &r);
	mica_free_wipe(body);
	if (err == 0) {
		*status = r.status;
		if (r.body_len) {
			*out_json = json_loadb(r.body, r.body_len, 0, NULL);
			if (!*out_json)
				err = MICA_EBADHEADER;
		}
	}
	mica_httpc_resp_cleanup(&r);
	return err;
}
