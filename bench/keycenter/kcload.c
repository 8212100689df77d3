/* kcload.c - closed-loop HTTPS load generator for bench/keycenter. wrk cannot
 * present a client certificate, so this one tool measures both sides of the
 * comparison: N threads, each with its own libcurl easy handle (one
 * keep-alive connection, mutual TLS, server verified against the CA), send
 * requests back to back for D seconds after a warm-up request each (so
 * handshakes are not measured), recording every latency in a log-linear
 * histogram (values within 1/64 of the truth). Prints one line:
 *   requests=N errors=E seconds=S rps=R p50_ms=A p99_ms=B max_ms=C
 * Usage: kcload --url URL --ca CA [--cert CERT --key KEY]
 *               [--body JSON (POST; GET without)] [--connections 64] [--duration 10]
 *               [--header "Name: value"]... [--body-file FILE] [--header-file FILE]
 * Without --cert/--key no client certificate is presented. --header adds a
 * header to every request (up to 16). --body-file and --header-file hold
 * one body or one header per line; worker i uses line i modulo their count
 * (e.g. one login body or one bearer token per connection, bench/account);
 * a body file makes every request a POST, as --body does.
 */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SUB_BITS 7
#define SUB (1 << SUB_BITS)
#define NBUCKETS ((64 - SUB_BITS) * SUB)

#define MAX_HEADERS 16

struct options {
	const char *url, *ca, *cert, *key, *body;
	int connections;
	double duration;
	const char *headers[MAX_HEADERS];
	int nheaders;
	char **body_lines, **header_lines; /* from --body-file / --header-file */
	size_t nbody_lines, nheader_lines;
};

struct worker {
	pthread_t thread;
	int index;
	const struct options *opt;
	CURL *curl;
	struct curl_slist *headers;
	uint64_t requests, errors;
	int warmup_ok;
	uint64_t hist[NBUCKETS];
	long last_status;
	char errbuf[CURL_ERROR_SIZE];
};

/* Workers warm up, meet at |ready|, main sets the deadline, all meet at |go|. */
static pthread_barrier_t ready, go;
static int64_t deadline_ns;

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Log-linear bucket of |us|: exact below SUB, then SUB / 2 buckets per
 * power of two above (as HdrHistogram does): us >> e keeps the top SUB_BITS
 * bits, which lie in [SUB / 2, SUB). */
static size_t bucket_of(uint64_t us)
{
	int e;
	if (us < SUB)
		return (size_t)us;
	e = 63 - __builtin_clzll(us) - (SUB_BITS - 1);
	return (size_t)e * (SUB / 2) + (size_t)(us >> e);
}

/* The largest value that falls in bucket |b| (the reported value). */
static uint64_t bucket_top(size_t b)
{
	if (b < SUB)
		return b;
	size_t e = (b - SUB / 2) / (SUB / 2);
	uint64_t mant = (uint64_t)(b - e * (SUB / 2));
	return ((mant + 1) << e) - 1;
}

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
	(void)p;
	(void)arg;
	return size * n;
}

static int setup(struct worker *w)
{
	const struct options *o = w->opt;
	const char *body = o->body;
	if (!(w->curl = curl_easy_init()))
		return -1;
	w->headers = curl_slist_append(NULL, "Content-Type: application/json");
	w->headers = curl_slist_append(w->headers, "Expect:");
	for (int i = 0; i < o->nheaders; i++)
		w->headers = curl_slist_append(w->headers, o->headers[i]);
	if (o->nheader_lines)
		w->headers = curl_slist_append(
			w->headers, o->header_lines[(size_t)w->index % o->nheader_lines]);
	if (o->nbody_lines)
		body = o->body_lines[(size_t)w->index % o->nbody_lines];
	if (!w->headers)
		return -1;
	curl_easy_setopt(w->curl, CURLOPT_URL, o->url);
	curl_easy_setopt(w->curl, CURLOPT_CAINFO, o->ca);
	if (o->cert) {
		curl_easy_setopt(w->curl, CURLOPT_SSLCERT, o->cert);
		curl_easy_setopt(w->curl, CURLOPT_SSLKEY, o->key);
	}
	curl_easy_setopt(w->curl, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(w->curl, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(w->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(w->curl, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(w->curl, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(w->curl, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(w->curl, CURLOPT_ERRORBUFFER, w->errbuf);
	curl_easy_setopt(w->curl, CURLOPT_HTTPHEADER, w->headers);
	if (body) {
		curl_easy_setopt(w->curl, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(w->curl, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	} else {
		curl_easy_setopt(w->curl, CURLOPT_HTTPGET, 1L);
	}
	return 0;
}

/* One request; returns 1 on a 2xx answer. */
static int one(struct worker *w)
{
	long status = 0;
	w->errbuf[0] = '\0';
	if (curl_easy_perform(w->curl) != CURLE_OK)
		return 0;
	curl_easy_getinfo(w->curl, CURLINFO_RESPONSE_CODE, &status);
	w->last_status = status;
	return status >= 200 && status < 300;
}

static void *run(void *arg)
{
	struct worker *w = arg;
	int64_t end;
	/* Warm-up: connect and handshake before the clock starts. */
	w->warmup_ok = one(w);
	pthread_barrier_wait(&ready);
	pthread_barrier_wait(&go);
	end = deadline_ns;
	for (;;) {
		int64_t t0 = now_ns();
		if (t0 >= end)
			break;
		int ok = one(w);
		int64_t t1 = now_ns();
		w->requests++;
		if (!ok)
			w->errors++;
		w->hist[bucket_of((uint64_t)(t1 - t0) / 1000)]++;
	}
	return NULL;
}

static double percentile(const uint64_t *hist, uint64_t total, double q)
{
	uint64_t want = (uint64_t)(q * (double)total + 0.5), seen = 0;
	if (want == 0)
		want = 1;
	for (size_t b = 0; b < NBUCKETS; b++) {
		seen += hist[b];
		if (seen >= want)
			return (double)bucket_top(b) / 1000.0;
	}
	return 0;
}

/* Reads the non-empty lines of |path| (LF or CRLF) into *lines. */
static int read_lines(const char *path, char ***lines, size_t *n)
{
	FILE *fp = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	*lines = NULL;
	*n = 0;
	if (!fp) {
		fprintf(stderr, "kcload: %s: %s\n", path, strerror(errno));
		return -1;
	}
	while ((len = getline(&line, &cap, fp)) >= 0) {
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		if (len == 0)
			continue;
		char **grown = realloc(*lines, (*n + 1) * sizeof(**lines));
		if (!grown || !(grown[*n] = strdup(line))) {
			*lines = grown ? grown : *lines;
			break;
		}
		*lines = grown;
		(*n)++;
	}
	free(line);
	fclose(fp);
	if (*n == 0)
		fprintf(stderr, "kcload: %s: no lines\n", path);
	return *n ? 0 : -1;
}

static int parse(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {{"url", required_argument, NULL, 'u'},
						 {"ca", required_argument, NULL, 'a'},
						 {"cert", required_argument, NULL, 'c'},
						 {"key", required_argument, NULL, 'k'},
						 {"body", required_argument, NULL, 'b'},
						 {"connections", required_argument, NULL, 'n'},
						 {"duration", required_argument, NULL, 'd'},
						 {"header", required_argument, NULL, 'H'},
						 {"body-file", required_argument, NULL, 'B'},
						 {"header-file", required_argument, NULL, 'F'},
						 {NULL, 0, NULL, 0}};
	int ch;
	o->connections = 64;
	o->duration = 10;
	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (ch) {
		case 'u':
			o->url = optarg;
			break;
		case 'a':
			o->ca = optarg;
			break;
		case 'c':
			o->cert = optarg;
			break;
		case 'k':
			o->key = optarg;
			break;
		case 'b':
			o->body = optarg;
			break;
		case 'n':
			o->connections = atoi(optarg);
			break;
		case 'd':
			o->duration = atof(optarg);
			break;
		case 'H':
			if (o->nheaders == MAX_HEADERS)
				return -1;
			o->headers[o->nheaders++] = optarg;
			break;
		case 'B':
			if (o->body_lines ||
			    read_lines(optarg, &o->body_lines, &o->nbody_lines) != 0)
				return -1;
			break;
		case 'F':
			if (o->header_lines ||
			    read_lines(optarg, &o->header_lines, &o->nheader_lines) != 0)
				return -1;
			break;
		default:
			return -1;
		}
	}
	if (optind != argc || !o->url || !o->ca || !o->cert != !o->key || o->connections < 1 ||
	    o->connections > 4096 || o->duration <= 0)
		return -1;
	return 0;
}

int main(int argc, char **argv)
{
	struct options opt = {0};
	struct worker *w;
	uint64_t *hist, requests = 0, errors = 0;
	int64_t start, stop;
	int n, reported = 0;

	if (parse(argc, argv, &opt) != 0) {
		fprintf(stderr,
			"usage: kcload --url URL --ca CA [--cert CERT --key KEY] [--body JSON]"
			" [--connections N] [--duration SECONDS] [--header H]... [--body-file FILE]"
			" [--header-file FILE]\n");
		return 2;
	}
	n = opt.connections;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	w = calloc((size_t)n, sizeof(*w));
	hist = calloc(NBUCKETS, sizeof(*hist));
	if (!w || !hist) {
		free(w);
		free(hist);
		return 1;
	}
	pthread_barrier_init(&ready, NULL, (unsigned)n + 1);
	pthread_barrier_init(&go, NULL, (unsigned)n + 1);
	for (int i = 0; i < n; i++) {
		w[i].opt = &opt;
		w[i].index = i;
		if (setup(&w[i]) != 0 || pthread_create(&w[i].thread, NULL, run, &w[i]) != 0) {
			fprintf(stderr, "kcload: cannot start worker %d\n", i);
			return 1;
		}
	}
	pthread_barrier_wait(&ready);
	start = now_ns();
	deadline_ns = start + (int64_t)(opt.duration * 1e9);
	pthread_barrier_wait(&go);
	for (int i = 0; i < n; i++)
		pthread_join(w[i].thread, NULL);
	stop = now_ns();
	for (int i = 0; i < n; i++) {
		requests += w[i].requests;
		errors += w[i].errors;
		for (size_t b = 0; b < NBUCKETS; b++)
			hist[b] += w[i].hist[b];
		/* Errors are part of the figures; the first worker's cause is shown. */
		if ((w[i].errors || !w[i].warmup_ok) && !reported++)
			fprintf(stderr, "kcload: worker %d: %llu errors%s; last: status %ld %s\n",
				i, (unsigned long long)w[i].errors,
				w[i].warmup_ok ? "" : " (warm-up failed)", w[i].last_status,
				w[i].errbuf);
	}
	double secs = (double)(stop - start) / 1e9;
	uint64_t max_b = 0;
	for (size_t b = 0; b < NBUCKETS; b++)
		if (hist[b])
			max_b = b;
	printf("requests=%llu errors=%llu seconds=%.2f rps=%.0f p50_ms=%.3f p99_ms=%.3f "
	       "max_ms=%.3f\n",
	       (unsigned long long)requests, (unsigned long long)errors, secs,
	       (double)(requests - errors) / secs, percentile(hist, requests, 0.50),
	       percentile(hist, requests, 0.99), (double)bucket_top(max_b) / 1000.0);
	for (int i = 0; i < n; i++) {
		curl_easy_cleanup(w[i].curl);
		curl_slist_free_all(w[i].headers);
	}
	free(w);
	free(hist);
	for (size_t i = 0; i < opt.nbody_lines; i++)
		free(opt.body_lines[i]);
	for (size_t i = 0; i < opt.nheader_lines; i++)
		free(opt.header_lines[i]);
	free(opt.body_lines);
	free(opt.header_lines);
	curl_global_cleanup();
	return 0;
}
