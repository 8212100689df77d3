/* loadgen.c - the push load generator: many MQTT 3.1.1 devices over TLS
 * (lib/uvtls, libuv) from one process, against mica-push's broker or a
 * mosquitto run side by side. Device i connects from source address
 * src(base + i) spread over 127.20.0.0/16 (50,000 addresses), so the
 * ephemeral ports of one source address never run out; the process raises
 * RLIMIT_NOFILE to its hard limit (one descriptor per device: run several
 * processes, with distinct -o bases, for more than the limit).
 *
 * Devices are either synthetic (-k mosquitto style: client id "m<8 digits>",
 * clean session 0, SUBSCRIBE d/<id> QoS 1 on the first connect, so a
 * reconnect finds its session and needs no SUBSCRIBE) or read from a device
 * file (-D: one "regid token content_key_base64" per line, from
 * POST /v1/push/register; CONNECT with client id = regid, username "d",
 * password = token, as docs/push-internals.md says; then SUBSCRIBE d/<regid>
 * on every connection, since the broker delivers only after it). A device
 * is "ready" at SUBACK, or at CONNACK for a mosquitto session that was
 * present.
 *
 * Modes (-M):
 *   hold   connect N (device 0 first, alone: the warm-up), settle, report the
 *          servers' RSS growth per device (-P PID[,PID...]: VmRSS summed),
 *          hold them -t seconds, report how many are still connected.
 *          (-P in the other modes prints the same line before going on.)
 *   storm  connect N, settle, drop them all (close_notify + FIN from every
 *          device), wait for every close, then reconnect all N offering the
 *          TLS session each device got last (resumption), -c handshakes in
 *          flight at once; report reconnects per second (first connect
 *          started to last device ready) and how many resumed.
 *   rate   connect N, then send R messages to every device (round r goes
 *          to devices 0..N-1 in order) and measure at the devices: the
 *          end-to-end rate (messages delivered / first send to last
 *          delivery), p50/p99 latency (send to arrival, one monotonic clock:
 *          sender and devices are this process), duplicates and loss
 *          (accepted by the broker or the API, never delivered within -T
 *          seconds of the last send). Each delivery is PUBACKed at once.
 *          The sender (-S):
 *            mqtt       one more MQTT/TLS connection publishing QoS 1 to
 *                       d/<id>, at most -w PUBLISHes unacknowledged; the
 *                       payload is "<pid>.<round>.<send time ns>" padded to -l
 *                       bytes; accepted = PUBACKed.
 *            http:PORT  the developer API, POST /v3/message/regid over
 *                       HTTPS keep-alive (-H connections, one request in
 *                       flight on each), registration_id = -B regids
 *                       (comma list, one batch never spans two rounds),
 *                       pass_through=1, payload "<pid>.<round>.<send time ns>"
 *                       padded to -l, restricted_package_name -g, header
 *                       Authorization: key=<-A file's contents>;
 *                       accepted = the regids of a 200 answer. The device
 *                       opens the sealed message with its content key
 *                       (AAD "mica-push v1\0<regid>") and reads "payload".
 *
 *   register  not a test: registers N devices of app -I APP_ID, package -g,
 *          at the registration API on port -p (POST /v1/push/register,
 *          -H keep-alive connections), and writes the device file -D
 *          ("regid token content_key" lines) the other modes read.
 *
 * Usage: loadgen -M MODE -n N -a CA -p PORT [options]
 *   -h HOST  server address (127.0.0.1)   -o BASE  first source index (0)
 *   -c CONC  connects in flight (64)      -s SECS  settle before RSS (2)
 *   -t SECS  hold time (hold: 0)          -P PIDS  servers to measure (hold)
 *   -R N     rounds (rate: 10)            -T SECS  wait for stragglers (10)
 *   -w N     MQTT sender window (1000)    -l N     payload bytes (64)
 *   -B N     regids per request (100)     -H N     HTTPS sender conns (4)
 *   -g PKG   restricted_package_name      -A FILE  app secret file
 *   -W SECS  a connect phase or a sender without progress for SECS (60)
 *            gives up: the devices still connecting count as failed
 *   -U PIDS  processes whose CPU time (utime + stime, /proc/PID/stat) each
 *            phase reports per operation (default: the -P list): the
 *            contention-free view, since every process here shares CPUs;
 *            +PID is that process and its children (PostgreSQL's backends)
 * Prints one line "mode=... key=value ..." on stdout; diagnostics on stderr.
 * Exit 0, or 1 when a device failed (the line still says how many).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "crypto.h"
#include "mipush/mqtt.h"
#include "thread.h"
#include "uvtls.h"

#define DEC_BUF 4096
#define ID_MAX 64
#define KEEPALIVE_S 600
#define AAD_PREFIX "mica-push v1"
#define PUB_PENDING_MAX (1u << 20)
#define STALL_S 60 /* default -W */
#define CPU_SNAP_MAX 1024

struct cpu_snap {
	int n;
	long pid[CPU_SNAP_MAX];
	long long ticks[CPU_SNAP_MAX];
};

enum dev_state { D_IDLE, D_CONNECTING, D_WAIT_ACK, D_READY, D_CLOSING };
enum phase {
	PH_WARM,
	PH_PAUSE,
	PH_CONNECT,
	PH_SETTLE,
	PH_HOLD,
	PH_DROP,
	PH_RECONNECT,
	PH_RATE,
	PH_DONE
};

struct dev {
	mica_uvtls_conn *c;
	SSL_SESSION *sess;
	struct push_mqtt_decoder dec;
	uint8_t *dbuf;
	uint8_t state;
	bool resumed;
	uint8_t key[32];
	char id[ID_MAX];
	char token[ID_MAX];
	uint8_t *seen; /* rate: a bit per round */
};

struct hconn {
	mica_uvtls_conn *c;
	char *rbuf;
	size_t rlen, rcap;
	size_t batch; /* regids of the request in flight, 0: none */
	int reg;      /* register: the device index in flight */
	bool open;
};

static struct {
	uv_loop_t *loop;
	SSL_CTX *ctx;
	const char *host;
	int port;
	const char *mode;
	int n, base, conc;
	unsigned settle_s, hold_s, tail_s;
	const char *pids;
	const char *cpu_pids;
	struct cpu_snap cpu0;
	bool mosq;
	struct dev *d;
	int cursor, limit, inflight, ready, failed, closed_now, lost_conns;
	enum phase ph;
	uint64_t t0, t1;
	long rss_before, rss_after;
	int resumed;
	uv_timer_t timer;
	uv_timer_t watchdog; /* a stalled phase gives up instead of hanging */
	int wd_seen, stall_s;
	uint64_t wd_since;
	/* rate */
	int rounds, payload_len;
	const char *sender; /* "mqtt" or "http" */
	int http_port, hconns, batch;
	const char *pkg;
	char *appkey;
	int next_r, next_i; /* the send cursor */
	bool send_done;
	uint64_t accepted, rejected, delivered, dups, bad;
	uint64_t first_send, last_send, last_rx, last_ack;
	uint32_t *lat_us;
	size_t lat_n, lat_cap;
	/* mqtt sender */
	mica_uvtls_conn *pub;
	struct push_mqtt_decoder pdec;
	uint8_t *pbuf;
	bool pub_ready;
	int pub_window, pub_inflight;
	uint16_t pub_next;
	uint8_t *pub_used; /* 65536 packet ids */
	/* http sender */
	struct hconn *h;
	int http_errors;
	/* register */
	bool registering;
	const char *app_id;
	FILE *regout;
	int reg_next, reg_ok, reg_failed;
} G;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Sum of VmRSS (kB) of the comma-separated pids in |list|; -1 if one is gone. */
static long rss_kb(const char *list)
{
	long sum = 0;
	const char *p = list;
	while (p && *p) {
		char path[64], line[256];
		long kb = -1;
		snprintf(path, sizeof(path), "/proc/%ld/status", strtol(p, NULL, 10));
		FILE *f = fopen(path, "r");
		if (!f)
			return -1;
		while (fgets(line, sizeof(line), f))
			if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
				break;
		fclose(f);
		if (kb < 0)
			return -1;
		sum += kb;
		p = strchr(p, ',');
		if (p)
			p++;
	}
	return sum;
}

/* CPU time (user + system, in clock ticks) of process |pid|, and its parent
 * in *ppid; -1 when it is gone. */
static long long pid_ticks(long pid, long *ppid)
{
	char path[64], buf[1024];
	unsigned long long ut, st;
	long pp = 0;
	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = 0;
	fclose(f);
	char *q = strrchr(buf, ')');
	/* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
	 * utime stime */
	if (!q || sscanf(q + 2, "%*c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &pp, &ut,
			 &st) != 3)
		return -1;
	if (ppid)
		*ppid = pp;
	return (long long)(ut + st);
}

/* Takes a CPU snapshot of the comma-separated pids in |list| into |s|; a
 * pid written "+PID" stands for that process and every child it has at the
 * time (PostgreSQL's backends, opened as the load needs them). */
static void cpu_snap_take(const char *list, struct cpu_snap *s)
{
	s->n = 0;
	for (const char *p = list; p && *p;) {
		bool kids = *p == '+';
		long pid = strtol(p + kids, NULL, 10);
		long long t = pid_ticks(pid, NULL);
		if (t >= 0 && s->n < CPU_SNAP_MAX) {
			s->pid[s->n] = pid;
			s->ticks[s->n++] = t;
		}
		DIR *d = kids ? opendir("/proc") : NULL;
		for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
			long c = strtol(e->d_name, NULL, 10), pp = 0;
			if (c > 0 && (t = pid_ticks(c, &pp)) >= 0 && pp == pid &&
			    s->n < CPU_SNAP_MAX) {
				s->pid[s->n] = c;
				s->ticks[s->n++] = t;
			}
		}
		if (d)
			closedir(d);
		p = strchr(p, ',');
		if (p)
			p++;
	}
}

/* Ticks spent since |from| by the processes of a new snapshot: a process
 * that started since counts all of its time, one that ended counts none. */
static long long cpu_ticks_since(const struct cpu_snap *from)
{
	static struct cpu_snap now;
	long long sum = 0;
	cpu_snap_take(G.cpu_pids, &now);
	for (int i = 0; i < now.n; i++) {
		long long t0 = 0;
		for (int k = 0; k < from->n; k++)
			if (from->pid[k] == now.pid[i])
				t0 = from->ticks[k];
		sum += now.ticks[i] - t0;
	}
	return sum;
}

/* Server CPU microseconds per operation since |from| (ticks), or 0. */
static double cpu_us_per(const struct cpu_snap *from, double ops)
{
	if (!G.cpu_pids || ops <= 0)
		return 0;
	return (double)cpu_ticks_since(from) * 1e6 / (double)sysconf(_SC_CLK_TCK) / ops;
}

/* ---- Devices ------------------------------------------------------------ */

static void phase_done(void);
static void drop_done(void);
static void register_done(void);
static void finish(void);
static void start_more(void);
static void pump_mqtt(void);
static void check_rate_done(void);

static void source_of(int g, char *buf, size_t n)
{
	int a = g % 50000;
	snprintf(buf, n, "127.20.%d.%d", 1 + a / 250, 1 + a % 250);
}

static int send_pkt(mica_uvtls_conn *c, const struct push_mqtt_packet *p)
{
	uint8_t out[512];
	size_t len;
	if (push_mqtt_encode(p, out, sizeof(out), &len, NULL) != 0)
		return -1;
	return mica_uvtls_write(c, out, len) == 0 ? 0 : -1;
}

static void dev_ready(struct dev *d)
{
	d->state = D_READY;
	G.inflight--;
	G.ready++;
	start_more();
}

static void dev_open(mica_uvtls_conn *c)
{
	struct dev *d = mica_uvtls_user(c);
	d->resumed = SSL_session_reused(mica_uvtls_ssl(c)) == 1;
	struct push_mqtt_packet p = {.type = PUSH_MQTT_CONNECT};
	p.connect.clean_session = !G.mosq;
	p.connect.keepalive = KEEPALIVE_S;
	p.connect.client_id = (struct push_mqtt_str){d->id, strlen(d->id)};
	if (d->token[0]) {
		p.connect.has_username = true;
		p.connect.username = (struct push_mqtt_str){"d", 1};
		p.connect.has_password = true;
		p.connect.password =
			(struct push_mqtt_bin){(const uint8_t *)d->token, strlen(d->token)};
	}
	push_mqtt_decoder_init(&d->dec, PUSH_MQTT_FROM_SERVER, DEC_BUF, d->dbuf, DEC_BUF);
	d->state = D_WAIT_ACK;
	if (send_pkt(c, &p) != 0)
		mica_uvtls_close(c);
}

/* A message arrived at device |d|: "<pid>.<round>.<ns>" (after opening it for
 * mica); one of another run (another pid) is "bad", never a delivery. */
static void dev_message(struct dev *d, const uint8_t *pl, size_t len)
{
	uint64_t t = now_ns();
	char tmp[64];
	json_t *js = NULL;
	uint8_t *pt = NULL;
	size_t pt_len = 0;
	if (!G.mosq) {
		uint8_t aad[sizeof(AAD_PREFIX) + ID_MAX];
		size_t idl = strlen(d->id);
		memcpy(aad, AAD_PREFIX, sizeof(AAD_PREFIX)); /* with its NUL */
		memcpy(aad + sizeof(AAD_PREFIX), d->id, idl);
		if (mica_envelope_open(d->key, sizeof(d->key), aad, sizeof(AAD_PREFIX) + idl, pl,
				       len, &pt, &pt_len) != 0) {
			G.bad++;
			return;
		}
		js = json_loadb((const char *)pt, pt_len, 0, NULL);
		const char *s = json_string_value(json_object_get(js, "payload"));
		if (!s) {
			G.bad++; /* a deleted_messages marker or a notification */
			goto out;
		}
		pl = (const uint8_t *)s;
		len = strlen(s);
	}
	size_t k = len < sizeof(tmp) - 1 ? len : sizeof(tmp) - 1;
	memcpy(tmp, pl, k);
	tmp[k] = 0;
	char *dot;
	long run = strtol(tmp, &dot, 10), r = -1;
	if (*dot == '.' && run == (long)getpid())
		r = strtol(dot + 1, &dot, 10);
	if (*dot != '.' || r < 0 || r >= G.rounds) {
		G.bad++;
		goto out;
	}
	uint64_t sent = strtoull(dot + 1, NULL, 10);
	if (d->seen[r / 8] & (1u << (r % 8))) {
		G.dups++;
		goto out;
	}
	d->seen[r / 8] |= (uint8_t)(1u << (r % 8));
	G.delivered++;
	G.last_rx = t;
	if (G.lat_n < G.lat_cap)
		G.lat_us[G.lat_n++] = t > sent ? (uint32_t)((t - sent) / 1000) : 0;
	check_rate_done();
out:
	json_decref(js);
	if (pt) {
		mica_wipe(pt, pt_len);
		free(pt);
	}
}

static void dev_data(mica_uvtls_conn *c, const uint8_t *in, size_t len)
{
	struct dev *d = mica_uvtls_user(c);
	while (len > 0) {
		size_t used;
		struct push_mqtt_packet p;
		if (push_mqtt_decoder_feed(&d->dec, in, len, &used, &p) != 0) {
			fprintf(stderr, "loadgen: %s: bad packet from the server: %s\n", d->id,
				push_mqtt_decoder_reason(&d->dec));
			mica_uvtls_close(c);
			return;
		}
		in += used;
		len -= used;
		switch (p.type) {
		case PUSH_MQTT_CONNACK:
			if (d->state != D_WAIT_ACK || p.connack.return_code != 0) {
				fprintf(stderr, "loadgen: %s: CONNACK %u\n", d->id,
					p.connack.return_code);
				mica_uvtls_close(c);
				return;
			}
			/* mica's broker delivers after the device's SUBSCRIBE on every
			 * connection (the queue is the session); mosquitto keeps the
			 * subscription in a session that was present. */
			if (!G.mosq || !p.connack.session_present) {
				char topic[ID_MAX + 2];
				uint8_t out[128];
				size_t n;
				int tl = snprintf(topic, sizeof(topic), "d/%s", d->id);
				struct push_mqtt_topic t = {{topic, (size_t)tl}, 1};
				if (push_mqtt_encode_topics(PUSH_MQTT_SUBSCRIBE, 1, &t, 1, out,
							    sizeof(out), &n, NULL) != 0 ||
				    mica_uvtls_write(c, out, n) != 0) {
					mica_uvtls_close(c);
					return;
				}
			} else {
				dev_ready(d);
			}
			break;
		case PUSH_MQTT_SUBACK:
			if (d->state == D_WAIT_ACK) {
				if (p.suback.codes[0] == PUSH_MQTT_SUBACK_FAILURE) {
					mica_uvtls_close(c);
					return;
				}
				dev_ready(d);
			}
			break;
		case PUSH_MQTT_PUBLISH:
			if (p.publish.qos > 0) {
				uint8_t ack[4] = {0x40, 2, (uint8_t)(p.publish.id >> 8),
						  (uint8_t)p.publish.id};
				if (mica_uvtls_write(c, ack, sizeof(ack)) != 0)
					return;
			}
			if (d->seen)
				dev_message(d, p.publish.payload, p.publish.payload_len);
			break;
		default:
			break;
		}
	}
}

static void dev_session(mica_uvtls_conn *c, SSL_SESSION *s)
{
	struct dev *d = mica_uvtls_user(c);
	if (SSL_SESSION_up_ref(s) != 1)
		return;
	if (d->sess)
		SSL_SESSION_free(d->sess);
	d->sess = s;
}

static void dev_close(mica_uvtls_conn *c, mica_uvtls_close_reason r)
{
	struct dev *d = mica_uvtls_user(c);
	uint8_t st = d->state;
	d->c = NULL;
	d->state = D_IDLE;
	if (st == D_CLOSING) {
		if (--G.closed_now == 0 && G.ph == PH_DROP)
			drop_done();
		return;
	}
	if (st == D_READY) {
		/* A ready device lost its connection. */
		G.ready--;
		G.lost_conns++;
		if (G.lost_conns <= 5)
			fprintf(stderr, "loadgen: %s: connection lost (%s)\n", d->id,
				mica_uvtls_close_name(r));
		if (G.ph == PH_RATE)
			check_rate_done();
		return;
	}
	G.inflight--;
	G.failed++;
	if (G.failed <= 5)
		fprintf(stderr, "loadgen: %s: connect failed (%s)\n", d->id,
			mica_uvtls_close_name(r));
	start_more();
}

static const mica_uvtls_callbacks dev_cb = {
	.on_open = dev_open, .on_data = dev_data, .on_session = dev_session, .on_close = dev_close};

/* Starts connects up to G.limit, -c at a time; moves on when all are in. */
static void start_more(void)
{
	while (G.cursor < G.limit && G.inflight < G.conc) {
		struct dev *d = &G.d[G.cursor];
		char src[32];
		source_of(G.base + G.cursor, src, sizeof(src));
		G.cursor++;
		mica_uvtls_connect_options o = {.host = G.host,
						.port = G.port,
						.source = src,
						.session = d->sess,
						.timeout_ms = 30000};
		if (mica_uvtls_connect(G.loop, G.ctx, &o, &dev_cb, d, &d->c) != 0) {
			G.failed++;
			continue;
		}
		d->state = D_CONNECTING;
		G.inflight++;
	}
	if ((G.ph == PH_WARM || G.ph == PH_CONNECT || G.ph == PH_RECONNECT) &&
	    G.cursor >= G.limit && G.inflight == 0)
		phase_done();
}

/* ---- The MQTT sender ---------------------------------------------------- */

static int payload_of(char *buf, size_t cap, int r, uint64_t t)
{
	int n = snprintf(buf, cap, "%d.%d.%llu", (int)getpid(), r, (unsigned long long)t);
	while (n < G.payload_len && (size_t)n < cap - 1)
		buf[n++] = 'x';
	buf[n] = 0;
	return n;
}

static void pub_open(mica_uvtls_conn *c)
{
	char id[32];
	snprintf(id, sizeof(id), "loadgen-pub-%d", (int)getpid());
	struct push_mqtt_packet p = {.type = PUSH_MQTT_CONNECT};
	p.connect.clean_session = true;
	p.connect.keepalive = KEEPALIVE_S;
	p.connect.client_id = (struct push_mqtt_str){id, strlen(id)};
	push_mqtt_decoder_init(&G.pdec, PUSH_MQTT_FROM_SERVER, DEC_BUF, G.pbuf, DEC_BUF);
	if (send_pkt(c, &p) != 0)
		mica_uvtls_close(c);
}

static void pub_data(mica_uvtls_conn *c, const uint8_t *in, size_t len)
{
	while (len > 0) {
		size_t used;
		struct push_mqtt_packet p;
		if (push_mqtt_decoder_feed(&G.pdec, in, len, &used, &p) != 0) {
			mica_uvtls_close(c);
			return;
		}
		in += used;
		len -= used;
		if (p.type == PUSH_MQTT_CONNACK) {
			G.pub_ready = p.connack.return_code == 0;
		} else if (p.type == PUSH_MQTT_PUBACK && G.pub_used[p.id]) {
			G.pub_used[p.id] = 0;
			G.pub_inflight--;
			G.accepted++;
			G.last_ack = now_ns();
		}
	}
	pump_mqtt();
}

static void pub_drain(mica_uvtls_conn *c)
{
	(void)c;
	pump_mqtt();
}

static void pub_close(mica_uvtls_conn *c, mica_uvtls_close_reason r)
{
	(void)c;
	G.pub = NULL;
	G.pub_ready = false;
	if (!G.send_done || G.pub_inflight > 0) {
		fprintf(stderr, "loadgen: the MQTT sender lost its connection (%s)\n",
			mica_uvtls_close_name(r));
		G.send_done = true;
		G.rejected += (uint64_t)G.pub_inflight;
		G.pub_inflight = 0;
		check_rate_done();
	}
}

static const mica_uvtls_callbacks pub_cb = {
	.on_open = pub_open, .on_data = pub_data, .on_drain = pub_drain, .on_close = pub_close};

static void pump_mqtt(void)
{
	if (!G.pub || !G.pub_ready)
		return;
	while (!G.send_done && G.pub_inflight < G.pub_window &&
	       mica_uvtls_pending(G.pub) < PUB_PENDING_MAX) {
		while (G.pub_used[G.pub_next] || G.pub_next == 0)
			G.pub_next++;
		uint16_t pid = G.pub_next++;
		struct dev *d = &G.d[G.next_i];
		char topic[ID_MAX + 2], pl[1024];
		uint64_t t = now_ns();
		int tl = snprintf(topic, sizeof(topic), "d/%s", d->id);
		int pn = payload_of(pl, sizeof(pl), G.next_r, t);
		struct push_mqtt_packet p = {.type = PUSH_MQTT_PUBLISH};
		p.publish.qos = 1;
		p.publish.id = pid;
		p.publish.topic = (struct push_mqtt_str){topic, (size_t)tl};
		p.publish.payload = (const uint8_t *)pl;
		p.publish.payload_len = (size_t)pn;
		uint8_t out[1200];
		size_t len;
		if (push_mqtt_encode(&p, out, sizeof(out), &len, NULL) != 0 ||
		    mica_uvtls_write(G.pub, out, len) != 0)
			return;
		if (!G.first_send)
			G.first_send = t;
		G.last_send = t;
		G.pub_used[pid] = 1;
		G.pub_inflight++;
		if (++G.next_i == G.n) {
			G.next_i = 0;
			if (++G.next_r == G.rounds)
				G.send_done = true;
		}
	}
	if (G.send_done && G.pub_inflight == 0)
		check_rate_done();
}

/* ---- The HTTPS sender (mica's developer API) ---------------------------- */

static void register_send(struct hconn *h);

static void http_send(struct hconn *h)
{
	if (G.registering) {
		register_send(h);
		return;
	}
	if (G.send_done || h->batch || !h->open)
		return;
	int from = G.next_i, cnt = G.n - from < G.batch ? G.n - from : G.batch;
	size_t cap = (size_t)cnt * (ID_MAX + 3) + 2048 + (size_t)G.payload_len;
	char *body = malloc(cap), *req = malloc(cap + 1024);
	if (!body || !req) {
		free(body);
		free(req);
		return;
	}
	size_t bl = (size_t)snprintf(body, cap, "registration_id=");
	for (int k = 0; k < cnt; k++)
		bl += (size_t)snprintf(body + bl, cap - bl, "%s%s", k ? "%2C" : "",
				       G.d[from + k].id);
	uint64_t t = now_ns();
	char pl[1024];
	payload_of(pl, sizeof(pl), G.next_r, t);
	bl += (size_t)snprintf(body + bl, cap - bl,
			       "&payload=%s&pass_through=1&restricted_package_name=%s", pl, G.pkg);
	int rl = snprintf(req, cap + 1024,
			  "POST /v3/message/regid HTTP/1.1\r\nHost: %s\r\n"
			  "Authorization: key=%s\r\n"
			  "Content-Type: application/x-www-form-urlencoded\r\n"
			  "Content-Length: %zu\r\n\r\n%s",
			  G.host, G.appkey, bl, body);
	int r = mica_uvtls_write(h->c, req, (size_t)rl);
	free(body);
	mica_wipe(req, (size_t)rl); /* it holds the app secret */
	free(req);
	if (r != 0)
		return;
	if (!G.first_send)
		G.first_send = t;
	G.last_send = t;
	h->batch = (size_t)cnt;
	G.next_i += cnt;
	if (G.next_i == G.n) {
		G.next_i = 0;
		if (++G.next_r == G.rounds)
			G.send_done = true;
	}
}

static void http_open(mica_uvtls_conn *c)
{
	struct hconn *h = mica_uvtls_user(c);
	h->open = true;
	http_send(h);
}

/* Parses whole responses out of h->rbuf (Content-Length framing). */
static void http_response(struct hconn *h, int status, const char *body, size_t len);

static void http_data(mica_uvtls_conn *c, const uint8_t *in, size_t len)
{
	struct hconn *h = mica_uvtls_user(c);
	if (h->rlen + len + 1 > h->rcap) {
		size_t nc = (h->rlen + len + 1) * 2;
		char *nb = realloc(h->rbuf, nc);
		if (!nb) {
			mica_uvtls_close(c);
			return;
		}
		h->rbuf = nb;
		h->rcap = nc;
	}
	memcpy(h->rbuf + h->rlen, in, len);
	h->rlen += len;
	h->rbuf[h->rlen] = 0;
	for (;;) {
		char *end = strstr(h->rbuf, "\r\n\r\n");
		if (!end)
			break;
		size_t hl = (size_t)(end + 4 - h->rbuf), cl = 0;
		char *p = strcasestr(h->rbuf, "\r\ncontent-length:");
		if (p && p < end)
			cl = strtoul(p + 17, NULL, 10);
		if (h->rlen < hl + cl)
			break;
		int status = 0;
		(void)sscanf(h->rbuf, "HTTP/1.%*d %d", &status);
		http_response(h, status, h->rbuf + hl, cl);
		h->batch = 0;
		memmove(h->rbuf, h->rbuf + hl + cl, h->rlen - hl - cl);
		h->rlen -= hl + cl;
		h->rbuf[h->rlen] = 0;
		http_send(h);
	}
	check_rate_done();
}

static void http_close(mica_uvtls_conn *c, mica_uvtls_close_reason r)
{
	struct hconn *h = mica_uvtls_user(c);
	h->open = false;
	h->c = NULL;
	if (G.registering) {
		if (G.ph != PH_DONE) {
			fprintf(stderr, "loadgen: a registration connection closed (%s)\n",
				mica_uvtls_close_name(r));
			G.reg_failed += G.n - G.reg_ok - G.reg_failed;
			register_done();
		}
		return;
	}
	if (h->batch || !G.send_done) {
		fprintf(stderr, "loadgen: a developer API connection closed (%s)\n",
			mica_uvtls_close_name(r));
		G.rejected += h->batch;
		h->batch = 0;
		G.send_done = true; /* no silent retries: the figure would lie */
	}
	check_rate_done();
}

static const mica_uvtls_callbacks http_cb = {
	.on_open = http_open, .on_data = http_data, .on_close = http_close};

/* ---- Registration (mode register) ------------------------------------- */

static void register_send(struct hconn *h)
{
	if (h->batch || !h->open || G.reg_next >= G.n)
		return;
	char body[512], req[1024];
	int g = G.base + G.reg_next;
	/* device_hash: 64 hex digits, unique per device index. */
	int bl = snprintf(body, sizeof(body),
			  "{\"app_id\":\"%s\",\"package\":\"%s\",\"device_hash\":"
			  "\"%016x%016x%016x%016x\"}",
			  G.app_id, G.pkg, 0xb3c4u, 0x7u, (unsigned)getpid(), (unsigned)g);
	int rl = snprintf(req, sizeof(req),
			  "POST /v1/push/register HTTP/1.1\r\nHost: %s\r\n"
			  "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			  G.host, bl, body);
	if (mica_uvtls_write(h->c, req, (size_t)rl) != 0)
		return;
	h->batch = 1;
	h->reg = G.reg_next++;
}

static void register_done(void)
{
	double secs = (double)(now_ns() - G.t0) / 1e9;
	printf("mode=register devices=%d registered=%d failed=%d secs=%.2f per_s=%.0f\n", G.n,
	       G.reg_ok, G.reg_failed, secs, secs > 0 ? G.reg_ok / secs : 0.0);
	fclose(G.regout);
	G.regout = NULL;
	finish();
}

static void http_response(struct hconn *h, int status, const char *body, size_t len)
{
	if (!G.registering) {
		if (status == 200) {
			G.accepted += h->batch;
			G.last_ack = now_ns();
		} else {
			G.rejected += h->batch;
			if (++G.http_errors <= 3)
				fprintf(stderr, "loadgen: developer API answered %d: %.*s\n",
					status, (int)len, body);
		}
		return;
	}
	json_t *js = status == 200 ? json_loadb(body, len, 0, NULL) : NULL;
	const char *regid = json_string_value(json_object_get(js, "regid"));
	const char *token = json_string_value(json_object_get(js, "token"));
	const char *key = json_string_value(json_object_get(js, "content_key"));
	if (regid && token && key) {
		fprintf(G.regout, "%s %s %s\n", regid, token, key);
		G.reg_ok++;
	} else {
		G.reg_failed++;
		if (G.reg_failed <= 3)
			fprintf(stderr, "loadgen: register answered %d: %.*s\n", status, (int)len,
				body);
	}
	json_decref(js);
	if (G.reg_ok + G.reg_failed == G.n)
		register_done();
}

static void start_register(void)
{
	G.registering = true;
	G.t0 = now_ns();
	G.h = calloc((size_t)G.hconns, sizeof(*G.h));
	if (!G.h)
		exit(1);
	for (int k = 0; k < G.hconns; k++) {
		mica_uvtls_connect_options o = {
			.host = G.host, .port = G.port, .timeout_ms = 30000};
		if (mica_uvtls_connect(G.loop, G.ctx, &o, &http_cb, &G.h[k], &G.h[k].c) != 0) {
			fprintf(stderr, "loadgen: cannot connect to the registration API\n");
			exit(1);
		}
	}
}

/* ---- Phases ------------------------------------------------------------- */

static void report_rate(void);

static void check_rate_done(void)
{
	if (G.ph != PH_RATE || !G.send_done)
		return;
	bool senders_idle = G.pub_inflight == 0;
	for (int k = 0; k < G.hconns && G.h; k++)
		senders_idle = senders_idle && G.h[k].batch == 0;
	if (senders_idle && G.delivered >= G.accepted) {
		report_rate();
		finish();
	}
}

/* Stragglers: every second, give up -T seconds after the last send or
 * arrival; a sender that gets no answer for -W seconds ends the run
 * too (what it sent and was not acknowledged counts as rejected). */
static void rate_tick(uv_timer_t *t)
{
	(void)t;
	uint64_t last = G.last_rx > G.last_send ? G.last_rx : G.last_send, now = now_ns();
	if (G.last_ack > last)
		last = G.last_ack;
	if (!G.send_done && last && now - last > (uint64_t)G.stall_s * 1000000000u) {
		fprintf(stderr, "loadgen: the sender stalled for %d s; giving up\n", G.stall_s);
		G.send_done = true;
	}
	if (G.send_done && now - last > (uint64_t)G.tail_s * 1000000000u) {
		report_rate();
		finish();
	}
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static void report_rate(void)
{
	qsort(G.lat_us, G.lat_n, sizeof(*G.lat_us), cmp_u32);
	double secs = G.last_rx > G.first_send ? (double)(G.last_rx - G.first_send) / 1e9 : 0;
	double p50 = G.lat_n ? G.lat_us[(G.lat_n - 1) / 2] / 1000.0 : 0;
	double p99 = G.lat_n ? G.lat_us[(G.lat_n * 99 - 1) / 100] / 1000.0 : 0;
	uint64_t lost = G.accepted > G.delivered ? G.accepted - G.delivered : 0;
	printf("mode=rate sender=%s devices=%d ready=%d messages=%llu accepted=%llu "
	       "rejected=%llu delivered=%llu lost=%llu dups=%llu bad=%llu secs=%.2f "
	       "rate=%.0f p50_ms=%.2f p99_ms=%.2f lost_conns=%d batch=%d cpu_us_per_msg=%.0f\n",
	       G.sender, G.n, G.ready, (unsigned long long)G.n * (unsigned long long)G.rounds,
	       (unsigned long long)G.accepted, (unsigned long long)G.rejected,
	       (unsigned long long)G.delivered, (unsigned long long)lost,
	       (unsigned long long)G.dups, (unsigned long long)G.bad, secs,
	       secs > 0 ? (double)G.delivered / secs : 0.0, p50, p99, G.lost_conns,
	       strcmp(G.sender, "http") == 0 ? G.batch : 1,
	       cpu_us_per(&G.cpu0, (double)G.delivered));
}

static void start_rate(void)
{
	G.ph = PH_RATE;
	cpu_snap_take(G.cpu_pids, &G.cpu0);
	size_t bytes = (size_t)(G.rounds + 7) / 8;
	for (int i = 0; i < G.n; i++)
		if (!(G.d[i].seen = calloc(1, bytes)))
			exit(1);
	G.lat_cap = (size_t)G.n * (size_t)G.rounds;
	G.lat_us = malloc(G.lat_cap * sizeof(*G.lat_us));
	if (!G.lat_us)
		exit(1);
	uv_timer_start(&G.timer, rate_tick, 1000, 1000);
	if (strcmp(G.sender, "mqtt") == 0) {
		G.pub_used = calloc(65536, 1);
		G.pbuf = malloc(DEC_BUF);
		if (!G.pub_used || !G.pbuf)
			exit(1);
		G.pub_next = 1;
		mica_uvtls_connect_options o = {
			.host = G.host, .port = G.port, .timeout_ms = 30000};
		if (mica_uvtls_connect(G.loop, G.ctx, &o, &pub_cb, NULL, &G.pub) != 0) {
			fprintf(stderr, "loadgen: the MQTT sender cannot connect\n");
			exit(1);
		}
		return;
	}
	G.h = calloc((size_t)G.hconns, sizeof(*G.h));
	if (!G.h)
		exit(1);
	for (int k = 0; k < G.hconns; k++) {
		mica_uvtls_connect_options o = {
			.host = G.host, .port = G.http_port, .timeout_ms = 30000};
		if (mica_uvtls_connect(G.loop, G.ctx, &o, &http_cb, &G.h[k], &G.h[k].c) != 0) {
			fprintf(stderr, "loadgen: cannot connect to the developer API\n");
			exit(1);
		}
	}
}

static void finish(void)
{
	uv_timer_stop(&G.timer);
	uv_timer_stop(&G.watchdog);
	G.ph = PH_DONE;
	fflush(stdout);
	uv_stop(G.loop);
}

static void hold_done(uv_timer_t *t)
{
	(void)t;
	printf("mode=hold held=%d lost_conns=%d\n", G.ready, G.lost_conns);
	finish();
}

static void reconnect_go(uv_timer_t *t)
{
	(void)t;
	G.ph = PH_RECONNECT;
	G.cursor = 0;
	G.limit = G.n;
	G.failed = 0;
	G.t0 = now_ns();
	cpu_snap_take(G.cpu_pids, &G.cpu0);
	start_more();
}

static void drop_all(void)
{
	G.ph = PH_DROP;
	G.closed_now = 0;
	for (int i = 0; i < G.n; i++)
		if (G.d[i].state == D_READY) {
			G.d[i].state = D_CLOSING;
			G.ready--;
			G.closed_now++;
		}
	for (int i = 0; i < G.n; i++)
		if (G.d[i].state == D_CLOSING)
			mica_uvtls_close(G.d[i].c);
	if (G.closed_now == 0)
		drop_done();
}

/* Every device is closed; give the server a second to notice. */
static void drop_done(void)
{
	G.ph = PH_PAUSE;
	uv_timer_start(&G.timer, reconnect_go, 1000, 0);
}

static void settled(uv_timer_t *t)
{
	(void)t;
	if (strcmp(G.mode, "hold") == 0 || G.pids) {
		if (G.pids)
			G.rss_after = rss_kb(G.pids);
		printf("mode=hold devices=%d ready=%d failed=%d connect_secs=%.2f "
		       "connects_per_s=%.0f rss_before_kb=%ld rss_after_kb=%ld "
		       "bytes_per_conn=%.0f cpu_us_per_conn=%.0f\n",
		       G.n, G.ready, G.failed, (double)(G.t1 - G.t0) / 1e9,
		       G.t1 > G.t0 && G.ready > 1 ? (G.ready - 1) / ((double)(G.t1 - G.t0) / 1e9)
						  : 0.0,
		       G.rss_before, G.rss_after,
		       G.ready > 1 && G.pids
			       ? (double)(G.rss_after - G.rss_before) * 1024.0 / (G.ready - 1)
			       : 0.0,
		       cpu_us_per(&G.cpu0, G.ready - 1));
		fflush(stdout);
	}
	if (strcmp(G.mode, "storm") == 0) {
		drop_all();
		return;
	}
	if (strcmp(G.mode, "rate") == 0) {
		start_rate();
		return;
	}
	G.ph = PH_HOLD;
	uv_timer_start(&G.timer, hold_done, G.hold_s * 1000u, 0);
}

static void warm_go(uv_timer_t *t)
{
	(void)t;
	if (G.pids)
		G.rss_before = rss_kb(G.pids);
	cpu_snap_take(G.cpu_pids, &G.cpu0);
	G.ph = PH_CONNECT;
	G.limit = G.n;
	G.t0 = now_ns();
	start_more();
}

/* Every 5 s during a connect phase: when no device became ready or failed
 * for -W seconds, the devices still connecting (a server that never
 * answers CONNECT, say) are closed and count as failed, so the phase ends. */
static void watchdog_tick(uv_timer_t *t)
{
	(void)t;
	if (G.ph != PH_WARM && G.ph != PH_CONNECT && G.ph != PH_RECONNECT)
		return;
	uint64_t now = now_ns();
	if (G.ready + G.failed != G.wd_seen || G.inflight == 0) {
		G.wd_seen = G.ready + G.failed;
		G.wd_since = now;
		return;
	}
	if (now - G.wd_since < (uint64_t)G.stall_s * 1000000000u)
		return;
	fprintf(stderr, "loadgen: no progress for %d s; closing %d devices still connecting\n",
		G.stall_s, G.inflight);
	G.wd_since = now;
	for (int i = 0; i < G.n; i++)
		if ((G.d[i].state == D_CONNECTING || G.d[i].state == D_WAIT_ACK) && G.d[i].c)
			mica_uvtls_close(G.d[i].c);
}

/* start_more() found every connect of the phase finished. */
static void phase_done(void)
{
	switch (G.ph) {
	case PH_WARM:
		/* Device 0 is in: the server has what it keeps for its lifetime. */
		G.ph = PH_PAUSE;
		uv_timer_start(&G.timer, warm_go, 1000, 0);
		return;
	case PH_CONNECT:
		G.t1 = now_ns();
		fprintf(stderr, "loadgen: %d of %d devices ready in %.1f s (%d failed)\n", G.ready,
			G.n, (double)(G.t1 - G.t0) / 1e9, G.failed);
		G.ph = PH_SETTLE;
		uv_timer_start(&G.timer, settled, G.settle_s * 1000u, 0);
		return;
	case PH_RECONNECT: {
		G.t1 = now_ns();
		G.resumed = 0;
		for (int i = 0; i < G.n; i++)
			G.resumed += G.d[i].state == D_READY && G.d[i].resumed;
		double secs = (double)(G.t1 - G.t0) / 1e9;
		printf("mode=storm devices=%d reconnected=%d failed=%d resumed=%d secs=%.2f "
		       "connects_per_s=%.0f cpu_us_per_conn=%.0f\n",
		       G.n, G.ready, G.failed, G.resumed, secs, secs > 0 ? G.ready / secs : 0.0,
		       cpu_us_per(&G.cpu0, G.ready));
		finish();
		return;
	}
	default:
		return;
	}
}

/* ---- Setup -------------------------------------------------------------- */

static int load_devices(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	char line[512];
	int i = 0;
	while (i < G.n && fgets(line, sizeof(line), f)) {
		struct dev *d = &G.d[i];
		char key[128];
		size_t kl;
		if (sscanf(line, "%63s %63s %127s", d->id, d->token, key) != 3 ||
		    mica_base64_decode(key, strlen(key), d->key, sizeof(d->key), &kl) != 0 ||
		    kl != sizeof(d->key)) {
			fclose(f);
			fprintf(stderr, "loadgen: %s line %d: want \"regid token content_key\"\n",
				path, i + 1);
			return -1;
		}
		mica_wipe(key, sizeof(key));
		i++;
	}
	mica_wipe(line, sizeof(line));
	fclose(f);
	if (i < G.n) {
		fprintf(stderr, "loadgen: %s holds %d devices, %d wanted\n", path, i, G.n);
		return -1;
	}
	return 0;
}

static char *read_secret(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	char buf[256];
	char *s = fgets(buf, sizeof(buf), f) ? strdup(buf) : NULL;
	fclose(f);
	mica_wipe(buf, sizeof(buf));
	if (s)
		s[strcspn(s, "\r\n")] = 0;
	return s;
}

int main(int argc, char **argv)
{
	const char *ca = NULL, *devfile = NULL, *keyfile = NULL;
	int opt;
	G.host = "127.0.0.1";
	G.mode = "hold";
	G.conc = 64;
	G.settle_s = 2;
	G.tail_s = 10;
	G.rounds = 10;
	G.payload_len = 64;
	G.pub_window = 1000;
	G.sender = "mqtt";
	G.batch = 100;
	G.hconns = 4;
	G.pkg = "com.example.bench";
	G.n = 1000;
	G.stall_s = STALL_S;
	while ((opt = getopt(argc, argv, "M:n:a:h:p:o:c:s:t:P:U:kD:R:T:w:l:S:B:H:g:A:I:W:")) !=
	       -1) {
		switch (opt) {
		case 'M':
			G.mode = optarg;
			break;
		case 'n':
			G.n = atoi(optarg);
			break;
		case 'a':
			ca = optarg;
			break;
		case 'h':
			G.host = optarg;
			break;
		case 'p':
			G.port = atoi(optarg);
			break;
		case 'o':
			G.base = atoi(optarg);
			break;
		case 'c':
			G.conc = atoi(optarg);
			break;
		case 's':
			G.settle_s = (unsigned)atoi(optarg);
			break;
		case 't':
			G.hold_s = (unsigned)atoi(optarg);
			break;
		case 'P':
			G.pids = optarg;
			break;
		case 'U':
			G.cpu_pids = optarg;
			break;
		case 'k':
			G.mosq = true;
			break;
		case 'D':
			devfile = optarg;
			break;
		case 'R':
			G.rounds = atoi(optarg);
			break;
		case 'T':
			G.tail_s = (unsigned)atoi(optarg);
			break;
		case 'w':
			G.pub_window = atoi(optarg);
			break;
		case 'l':
			G.payload_len = atoi(optarg);
			break;
		case 'S':
			if (strncmp(optarg, "http:", 5) == 0) {
				G.sender = "http";
				G.http_port = atoi(optarg + 5);
			} else {
				G.sender = optarg;
			}
			break;
		case 'B':
			G.batch = atoi(optarg);
			break;
		case 'H':
			G.hconns = atoi(optarg);
			break;
		case 'g':
			G.pkg = optarg;
			break;
		case 'A':
			keyfile = optarg;
			break;
		case 'I':
			G.app_id = optarg;
			break;
		case 'W':
			G.stall_s = atoi(optarg);
			break;
		default:
			fprintf(stderr,
				"usage: see the comment at the top of bench/push/loadgen.c\n");
			return 2;
		}
	}
	bool http = strcmp(G.sender, "http") == 0;
	if (!G.cpu_pids)
		G.cpu_pids = G.pids;
	if (strcmp(G.mode, "register") == 0) {
		if (!ca || G.port <= 0 || G.n <= 0 || G.hconns <= 0 || !devfile || !G.app_id ||
		    strlen(G.app_id) > 64 || strlen(G.pkg) > 128) {
			fprintf(stderr,
				"loadgen: -M register needs -n N -a CA -p HTTPS_PORT -I APP_ID "
				"-D OUT_FILE\n");
			return 2;
		}
		if (!(G.regout = fopen(devfile, "w")))
			return 2;
		raise_nofile();
		signal(SIGPIPE, SIG_IGN);
		uv_loop_t rloop;
		uv_loop_init(&rloop);
		G.loop = &rloop;
		mica_thread_set_event(true);
		if (mica_uvtls_client_ctx_new(ca, NULL, NULL, &G.ctx) != 0)
			return 2;
		start_register();
		uv_run(&rloop, UV_RUN_DEFAULT);
		fflush(stdout);
		_exit(G.ph == PH_DONE && G.reg_failed == 0 ? 0 : 1);
	}
	if (!ca || G.port <= 0 || G.n <= 0 || G.conc <= 0 || G.base < 0 || G.rounds <= 0 ||
	    G.stall_s <= 0 || G.pub_window <= 0 || G.pub_window > 60000 || G.payload_len < 0 ||
	    G.payload_len > 900 || G.batch <= 0 || G.hconns <= 0 ||
	    (strcmp(G.mode, "hold") && strcmp(G.mode, "storm") && strcmp(G.mode, "rate")) ||
	    (!http && strcmp(G.sender, "mqtt")) || (http && (G.http_port <= 0 || !keyfile)) ||
	    (G.mosq == (devfile != NULL)) || (http && G.mosq)) {
		fprintf(stderr, "loadgen: need -M hold|storm|rate -n N -a CA -p PORT and either "
				"-k or -D DEVICES (-S http:PORT needs -D and -A); see "
				"bench/push/loadgen.c\n");
		return 2;
	}
	raise_nofile();
	signal(SIGPIPE, SIG_IGN);
	G.d = calloc((size_t)G.n, sizeof(*G.d));
	if (!G.d)
		return 1;
	for (int i = 0; i < G.n; i++) {
		if (!(G.d[i].dbuf = malloc(DEC_BUF)))
			return 1;
		if (G.mosq)
			snprintf(G.d[i].id, sizeof(G.d[i].id), "m%08d", G.base + i);
	}
	if (devfile && load_devices(devfile) != 0)
		return 2;
	if (keyfile && !(G.appkey = read_secret(keyfile))) {
		fprintf(stderr, "loadgen: cannot read the app secret from %s\n", keyfile);
		return 2;
	}
	uv_loop_t loop;
	uv_loop_init(&loop);
	G.loop = &loop;
	mica_thread_set_event(true);
	if (mica_uvtls_client_ctx_new(ca, NULL, NULL, &G.ctx) != 0) {
		fprintf(stderr, "loadgen: cannot load CA %s\n", ca);
		return 2;
	}
	uv_timer_init(&loop, &G.timer);
	uv_timer_init(&loop, &G.watchdog);
	uv_timer_start(&G.watchdog, watchdog_tick, 5000, 5000);
	G.wd_since = now_ns();
	G.ph = PH_WARM;
	G.limit = 1;
	start_more();
	uv_run(&loop, UV_RUN_DEFAULT);
	fflush(stdout);
	bool ok = G.ph == PH_DONE && G.failed == 0 && G.lost_conns == 0;
	if (strcmp(G.mode, "rate") == 0)
		ok = ok && G.delivered == G.accepted && G.rejected == 0 && G.bad == 0;
	/* The process exits with its connections: the kernel closes them. */
	_exit(ok ? 0 : 1);
}
