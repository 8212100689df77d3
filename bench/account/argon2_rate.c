/* argon2_rate.c - the raw Argon2id hash rate bench/account compares logins
 * with: N threads (default 2) each compute Argon2id back to back for D
 * seconds, with the account service's parameters (account/password.h:
 * m=19456 KiB, t=2, p=1, 16-byte salt, 32-byte hash) through the very
 * libargon2 call acct_password_verify() makes (argon2id_hash_raw), so the
 * figure is the ceiling a login path built on one verification can reach.
 * With --hugepages each thread instead gives libargon2 (argon2_ctx's
 * allocation callback) one mapping kept for the whole run, 2 MiB-aligned and
 * advised for transparent huge pages, as the service's Argon2 hashers do
 * (account/password.c); bench/account takes the faster of the two modes as the
 * raw rate, so the service's memory strategy cannot flatter its ratio.
 * Each thread warms up with one hash before the clock starts. Prints one line:
 *   threads=N seconds=S hashes=H rate=R per_thread_ms=M
 * Usage: argon2_rate [--threads 2] [--duration 5] [--memory KIB]
 *                    [--iterations T] [--parallelism P] [--hugepages]
 */
#include <argon2.h>
#include <getopt.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "account/password.h"

struct options {
	int threads;
	double duration;
	acct_argon2_params params;
	int hugepages;
};

struct worker {
	pthread_t thread;
	const struct options *opt;
	int index;
	uint64_t hashes;
	int failed;
};

static pthread_barrier_t ready, go;
static int64_t deadline_ns;

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#define HUGE_PAGE ((size_t)2 << 20)
static __thread uint8_t *huge_mem;

/* One 2 MiB-aligned mapping per thread, advised for huge pages, reused. */
static int huge_alloc(uint8_t **memory, size_t bytes)
{
	if (!huge_mem) {
		size_t len = (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
		void *m = mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED)
			return ARGON2_MEMORY_ALLOCATION_ERROR;
		huge_mem =
			(uint8_t *)(((uintptr_t)m + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
		(void)madvise(huge_mem, len, MADV_HUGEPAGE);
		/* cppcheck-suppress memleak ; the thread's arena, mapped once, lives until exit */
	}
	*memory = huge_mem;
	return ARGON2_OK;
}

static void huge_free(uint8_t *memory, size_t bytes)
{
	(void)memory;
	(void)bytes;
}

static int hash_once(const struct worker *w, uint64_t n)
{
	const acct_argon2_params *p = &w->opt->params;
	uint8_t salt[ACCT_ARGON2_SALT_LEN], out[ACCT_ARGON2_HASH_LEN];
	char pwd[64];
	/* A different password and salt each time, as real logins have. */
	int len = snprintf(pwd, sizeof(pwd), "bench-password-%d-%llu", w->index,
			   (unsigned long long)n);
	memset(salt, 0, sizeof(salt));
	memcpy(salt, &n, sizeof(n));
	salt[sizeof(salt) - 1] = (uint8_t)w->index;
	if (!w->opt->hugepages)
		return argon2id_hash_raw(p->t, p->m_kib, p->p, pwd, (size_t)len, salt, sizeof(salt),
					 out, sizeof(out));
	argon2_context ctx = {.out = out,
			      .outlen = sizeof(out),
			      .pwd = (uint8_t *)pwd,
			      .pwdlen = (uint32_t)len,
			      .salt = salt,
			      .saltlen = sizeof(salt),
			      .t_cost = p->t,
			      .m_cost = p->m_kib,
			      .lanes = p->p,
			      .threads = p->p,
			      .version = ARGON2_VERSION_13,
			      .allocate_cbk = huge_alloc,
			      .free_cbk = huge_free,
			      .flags = ARGON2_DEFAULT_FLAGS};
	return argon2_ctx(&ctx, Argon2_id);
}

static void *run(void *arg)
{
	struct worker *w = arg;
	uint64_t n = 0;
	w->failed = hash_once(w, n++) != ARGON2_OK;
	pthread_barrier_wait(&ready);
	pthread_barrier_wait(&go);
	while (!w->failed && now_ns() < deadline_ns) {
		if (hash_once(w, n++) != ARGON2_OK) {
			w->failed = 1;
			break;
		}
		w->hashes++;
	}
	return NULL;
}

static int parse(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {{"threads", required_argument, NULL, 'n'},
						 {"duration", required_argument, NULL, 'd'},
						 {"memory", required_argument, NULL, 'm'},
						 {"iterations", required_argument, NULL, 't'},
						 {"parallelism", required_argument, NULL, 'p'},
						 {"hugepages", no_argument, NULL, 'H'},
						 {NULL, 0, NULL, 0}};
	int ch;
	o->threads = 2;
	o->duration = 5;
	o->params = acct_argon2_defaults;
	o->hugepages = 0;
	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (ch) {
		case 'n':
			o->threads = atoi(optarg);
			break;
		case 'd':
			o->duration = atof(optarg);
			break;
		case 'm':
			o->params.m_kib = (uint32_t)strtoul(optarg, NULL, 10);
			break;
		case 't':
			o->params.t = (uint32_t)strtoul(optarg, NULL, 10);
			break;
		case 'p':
			o->params.p = (uint32_t)strtoul(optarg, NULL, 10);
			break;
		case 'H':
			o->hugepages = 1;
			break;
		default:
			return -1;
		}
	}
	if (optind != argc || o->threads < 1 || o->threads > 256 || o->duration <= 0 ||
	    !acct_argon2_params_valid(&o->params))
		return -1;
	return 0;
}

int main(int argc, char **argv)
{
	struct options opt;
	struct worker *w;
	uint64_t total = 0;
	int64_t start, stop;
	int failed = 0;

	if (parse(argc, argv, &opt) != 0) {
		fprintf(stderr,
			"usage: argon2_rate [--threads N] [--duration SECONDS] [--memory KIB]"
			" [--iterations T] [--parallelism P] [--hugepages]\n");
		return 2;
	}
	if (!(w = calloc((size_t)opt.threads, sizeof(*w))))
		return 1;
	pthread_barrier_init(&ready, NULL, (unsigned)opt.threads + 1);
	pthread_barrier_init(&go, NULL, (unsigned)opt.threads + 1);
	for (int i = 0; i < opt.threads; i++) {
		w[i].opt = &opt;
		w[i].index = i;
		if (pthread_create(&w[i].thread, NULL, run, &w[i]) != 0) {
			fprintf(stderr, "argon2_rate: cannot start thread %d\n", i);
			return 1;
		}
	}
	pthread_barrier_wait(&ready);
	start = now_ns();
	deadline_ns = start + (int64_t)(opt.duration * 1e9);
	pthread_barrier_wait(&go);
	for (int i = 0; i < opt.threads; i++) {
		pthread_join(w[i].thread, NULL);
		total += w[i].hashes;
		failed |= w[i].failed;
	}
	stop = now_ns();
	free(w);
	if (failed) {
		fprintf(stderr, "argon2_rate: Argon2id failed\n");
		return 1;
	}
	double secs = (double)(stop - start) / 1e9;
	printf("threads=%d seconds=%.2f hashes=%llu rate=%.1f per_thread_ms=%.2f m=%u t=%u p=%u"
	       " memory=%s\n",
	       opt.threads, secs, (unsigned long long)total, (double)total / secs,
	       total ? secs * 1000.0 * opt.threads / (double)total : 0.0, opt.params.m_kib,
	       opt.params.t, opt.params.p, opt.hugepages ? "hugepages" : "malloc");
	return 0;
}
