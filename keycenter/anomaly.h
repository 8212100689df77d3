/* anomaly.h - in-memory detection of abnormal Key Center access: a request
 * rate above a threshold for one (principal, key) pair, and a burst of denied
 * requests from one principal, each within a sliding window.
 *
 * The detector only decides; the caller turns an event into an alert row, a
 * log line and a webhook. Time is always passed in, so behaviour is
 * deterministic and tests need no sleeps.
 *
 * Windows: each tracked counter is a ring of n = ceil(window_ms / bucket_ms)
 * (at most KC_ANOMALY_BUCKETS) buckets of bucket_ms = ceil(window_ms / 60)
 * milliseconds: 60 buckets of 1 s for the default 60 s window. A count is the
 * sum of the current bucket and the n - 1 before it, so a request is counted
 * until n buckets after the start of its own bucket. For the default window
 * a request at any t in [0, 1000) counts up to t = 59999 and is gone at
 * t = 60000; in general the window is between n * bucket_ms - bucket_ms and
 * n * bucket_ms long (n * bucket_ms == window_ms when window_ms is a
 * multiple of 60, and is less than one bucket more otherwise).
 *
 * Reports: a counter reports when this request takes its count above the
 * threshold (exactly the threshold is fine) and it has not reported in the
 * last window_ms; so sustained abuse gives one event per window, not one per
 * request. A report is never sent for a count at or under the threshold.
 *
 * Memory is bounded: at most max_tracked (principal, key) pairs and, in a
 * separate table, at most max_tracked principals with denials. Inserting into
 * a full table evicts the entry least recently recorded; an evicted entry
 * that comes back starts from zero. Hash tables use SipHash-2-4 with a random
 * key, so chosen key names cannot pile into one chain.
 *
 * Thread safety: all functions but kc_anomaly_free may be called from any
 * number of threads; one mutex guards the tables (a record is a hash lookup
 * and a few additions, far below the cost of the audited request it counts).
 */
#ifndef KC_ANOMALY_H
#define KC_ANOMALY_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define KC_ANOMALY_BUCKETS 60
#define KC_ANOMALY_NAME_MAX 128 /* bytes of a principal or key name */
#define KC_ANOMALY_DEFAULT_WINDOW_MS 60000
#define KC_ANOMALY_MAX_WINDOW_MS (24 * 3600 * 1000)
#define KC_ANOMALY_DEFAULT_MAX_TRACKED 10000
#define KC_ANOMALY_MAX_TRACKED 1000000
#define KC_ANOMALY_MAX_EVENTS 2 /* one request can cross both thresholds */
/* Default rate threshold per (principal, key) and 60 s window, the default
 * of keycenter.alerts.rate_max: twice the most one saturated account-service
 * instance can ask of one key. Its busiest flow, registration, makes 4 Key
 * Center calls on one key (account-pii) per Argon2id hash, and Argon2id
 * (m=19 MiB, t=2) runs at most about 92 hashes/s on the 2-CPU reference host:
 * 4 x 92 x 60 = 22,080 per minute; x 2 = 44,160, rounded to 45,000 (750/s).
 * Measurements and tuning: docs/decisions.md, docs/operations.md. */
#define KC_ANOMALY_DEFAULT_RATE_MAX 45000

enum kc_alert_kind {
	KC_ALERT_RATE = 1,     /* requests per (principal, key) above the threshold */
	KC_ALERT_DENIAL_BURST, /* denied requests per principal above the threshold */
};

typedef struct kc_anomaly_options {
	/* Threshold per (principal, key) pair, counting allowed and denied
	 * requests; 0 turns rate detection off. */
	uint32_t max_requests_per_window;
	/* Threshold per principal, counting denied requests over all keys;
	 * 0 turns burst detection off. */
	uint32_t max_denials_per_window;
	/* 1..KC_ANOMALY_MAX_WINDOW_MS; 0 means KC_ANOMALY_DEFAULT_WINDOW_MS. */
	int64_t window_ms;
	/* Entries per table, 1..KC_ANOMALY_MAX_TRACKED; 0 means
	 * KC_ANOMALY_DEFAULT_MAX_TRACKED. */
	size_t max_tracked;
} kc_anomaly_options;

typedef struct kc_anomaly_event {
	enum kc_alert_kind kind;
	char principal[KC_ANOMALY_NAME_MAX + 1];
	char key[KC_ANOMALY_NAME_MAX + 1]; /* "" for KC_ALERT_DENIAL_BURST */
	uint64_t count;			   /* in the window, this request included */
	uint32_t threshold;		   /* the limit that was exceeded */
	int64_t window_ms;
	int64_t at_ms; /* the now_ms of the request that crossed */
} kc_anomaly_event;

struct kc_anomaly_stats {
	size_t pairs;	    /* (principal, key) pairs tracked now */
	size_t principals;  /* principals with denials tracked now */
	uint64_t evictions; /* entries evicted from either table so far */
};

typedef struct kc_anomaly kc_anomaly;

/* Creates a detector configured by |opts| (copied). Returns 0 and sets *out
 * (caller frees with kc_anomaly_free), MICA_EINVAL (NULL argument or an
 * option out of range), MICA_ENOMEM, or MICA_ECRYPTO (no random hash key). */
int kc_anomaly_new(const kc_anomaly_options *opts, kc_anomaly **out) MICA_WUR;

/* Frees |a| and everything it tracks; NULL is a no-op. No other thread may
 * be using |a|. */
void kc_anomaly_free(kc_anomaly *a);

/* Counts one request by |principal| on |key| (NULL or "" for requests that
 * name no key) at |now_ms| (milliseconds on a clock that does not jump, >= 0;
 * a time earlier than one already seen counts in the newest bucket), denied
 * or not. Both names are copied, at most KC_ANOMALY_NAME_MAX bytes each.
 * Returns the number of events written to |ev|: 0, 1, or 2 when the request
 * crosses both thresholds (rate first, then denial burst); or MICA_EINVAL
 * (NULL or empty principal, name too long, now_ms < 0, NULL a or ev). */
int kc_anomaly_record(kc_anomaly *a, const char *principal, const char *key, int denied,
		      int64_t now_ms, kc_anomaly_event ev[static KC_ANOMALY_MAX_EVENTS]) MICA_WUR;

/* Current table sizes and evictions, for metrics and tests. */
void kc_anomaly_stats(kc_anomaly *a, struct kc_anomaly_stats *out);

/* "rate" or "denial_burst" (the alert kind stored and sent); "unknown"
 * otherwise. */
const char *kc_alert_kind_name(enum kc_alert_kind kind);

#endif
