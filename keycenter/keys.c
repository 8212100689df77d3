/* keys.c - named keys: the in-memory cache of unsealed key material and
 * the PostgreSQL store of sealed versions. Material is generated here with
 * the CSPRNG, sealed inside the HSM by the owner service's KEK (associated
 * data binds it to the key name and version), and kept unsealed only in this
 * process's memory, which is wiped when a key is dropped. Another instance's
 * rotations are picked up when a cached entry is older than CACHE_TTL_MS: one
 * thread reloads it while the others keep using it for at most
 * REFRESH_GRACE_MS more, so a busy key is not reloaded by every request
 * thread at once (each on its own database connection). The unsealed
 * material lives in its own pages, locked in RAM and excluded from core
 * dumps, and is wiped before those pages are returned. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "crypto.h"
#include "db.h"
#include "http.h"
#include "keycenter/keycenter.h"
#include "log.h"
#include "thread.h"

#define KC_BUCKETS 256
#define CACHE_TTL_MS 5000
#define REFRESH_GRACE_MS 1000

struct kc_key {
	struct kc_key *next;
	struct kc_key_info info;
	int64_t loaded_ms;
	atomic_int refreshing; /* a thread is reloading this entry */
	uint32_t nversions;
	uint8_t (*material)[32]; /* material[v - 1] */
};

struct kc_kek {
	struct kc_kek *next;
	char service[KC_SERVICE_MAX + 1];
	kc_hsm_key *handle;
};

/* ---- locked pages for material -------------------------------------------- */

static size_t page_round(size_t n)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	return (n + page - 1) / page * page;
}

/* |n| zeroed bytes in pages of their own: mlock()ed so they are never
 * swapped out, MADV_DONTDUMP so a core dump leaves them out. mlock() may be
 * refused (RLIMIT_MEMLOCK, 8 MiB by default: 2048 keys of up to 128
 * versions); the pages are used anyway and a warning is logged once, as a
 * Key Center that stops serving is the worse failure. NULL if out of
 * memory. */
static void *secure_alloc(size_t n)
{
	static atomic_int warned;
	size_t len = page_round(n ? n : 1);
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	(void)madvise(p, len, MADV_DONTDUMP);
	if (mlock(p, len) != 0) {
		if (atomic_exchange(&warned, 1) == 0)
			MICA_LOG(MICA_LOG_WARN,
				 "keycenter: mlock of key material refused (raise "
				 "RLIMIT_MEMLOCK, e.g. LimitMEMLOCK=); it may be swapped");
	}
	return p;
}

static void secure_free(void *p, size_t n)
{
	size_t len = page_round(n ? n : 1);

	if (!p)
		return;
	mica_wipe(p, len);
	(void)munlock(p, len);
	munmap(p, len);
}

static unsigned bucket_of(const char *name)
{
	unsigned h = 2166136261u;
	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 16777619u;
	return h % KC_BUCKETS;
}

static void key_free(struct kc_key *k)
{
	if (!k)
		return;
	secure_free(k->material, (size_t)(k->nversions ? k->nversions : 1) * 32);
	free(k);
}

int kc_keys_init(kc_service *s)
{
	if (!(s->buckets = calloc(KC_BUCKETS, sizeof(*s->buckets))))
		return MICA_ENOMEM;
	pthread_rwlock_init(&s->keys_lock, NULL);
	pthread_mutex_init(&s->kek_lock, NULL);
	return 0;
}

void kc_keys_cleanup(kc_service *s)
{
	/* The locks exist only once kc_keys_init() ran. */
	if (!s->buckets)
		return;
	for (int b = 0; b < KC_BUCKETS; b++)
		for (struct kc_key *k = s->buckets[b], *n; k; k = n) {
			n = k->next;
			key_free(k);
		}
	free(s->buckets);
	s->buckets = NULL;
	pthread_rwlock_destroy(&s->keys_lock);
	kc_keks_drop(s);
}

void kc_keks_drop(kc_service *s)
{
	pthread_mutex_lock(&s->kek_lock);
	for (struct kc_kek *e = s->keks, *n; e; e = n) {
		n = e->next;
		kc_hsm_key_free(s->hsm, e->handle);
		free(e);
	}
	s->keks = NULL;
	pthread_mutex_unlock(&s->kek_lock);
}

/* Associated data sealing version |v| of key |name|. */
static size_t material_aad(uint8_t *aad, size_t cap, const char *name, uint32_t v)
{
	static const char tag[] = "mica-kc-key-v1";
	size_t nl = strlen(name), n = sizeof(tag) + nl + 1 + 4;
	if (n > cap)
		return 0;
	memcpy(aad, tag, sizeof(tag));
	memcpy(aad + sizeof(tag), name, nl + 1);
	aad[n - 4] = (uint8_t)(v >> 24);
	aad[n - 3] = (uint8_t)(v >> 16);
	aad[n - 2] = (uint8_t)(v >> 8);
	aad[n - 1] = (uint8_t)v;
	return n;
}

/* ---- KEKs ------------------------------------------------------------------ */

static int kek_fetch(mica_db *db, const char *service, uint8_t **wrapped, size_t *len)
{
	PGresult *res = NULL;
	const char *p[1] = {service};
	int err = mica_db_exec(db, "SELECT wrapped FROM keycenter.kek WHERE service = $1", 1, p,
			       &res);
	if (err == 0)
		err = PQntuples(res) == 1 ? mica_db_get_bytea(res, 0, 0, wrapped, len)
					  : MICA_ENOTFOUND;
	PQclear(res);
	return err;
}

int kc_kek_handle(kc_service *s, const char *service, const kc_hsm_key **out)
{
	mica_db *db = mica_db_thread();
	uint8_t *wrapped = NULL;
	size_t len = 0;
	char *hex = NULL;
	struct kc_kek *e;
	int err;

	pthread_mutex_lock(&s->kek_lock);
	for (e = s->keks; e; e = e->next)
		if (strcmp(e->service, service) == 0) {
			*out = e->handle;
			pthread_mutex_unlock(&s->kek_lock);
			return 0;
		}
	if (!db) {
		err = MICA_EDBCONN;
		goto out;
	}
	err = kek_fetch(db, service, &wrapped, &len);
	if (err == MICA_ENOTFOUND) {
		/* First key of this service: a new KEK, wrapped by the root key. */
		if ((err = kc_hsm_kek_create(s->hsm, &wrapped, &len)) != 0)
			goto out;
		if (!(hex = mica_db_bytea_encode(wrapped, len))) {
			err = MICA_ENOMEM;
			goto out;
		}
		const char *p[2] = {service, hex};
		err = mica_db_exec(db,
				   "INSERT INTO keycenter.kek (service, wrapped) VALUES ($1, $2)"
				   " ON CONFLICT (service) DO NOTHING",
				   2, p, NULL);
		free(wrapped);
		wrapped = NULL;
		/* Another instance may have won the race: use what is stored. */
		if (err == 0)
			err = kek_fetch(db, service, &wrapped, &len);
		if (err == 0)
			MICA_LOG(MICA_LOG_INFO, "keycenter: created the KEK of service %s",
				 service);
	}
	if (err)
		goto out;
	if (!(e = calloc(1, sizeof(*e)))) {
		err = MICA_ENOMEM;
		goto out;
	}
	if ((err = kc_hsm_kek_load(s->hsm, wrapped, len, &e->handle)) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "keycenter: the KEK of %s does not unwrap: %s", service,
			 mica_strerror(err));
		free(e);
		goto out;
	}
	snprintf(e->service, sizeof(e->service), "%s", service);
	e->next = s->keks;
	s->keks = e;
	*out = e->handle;
out:
	pthread_mutex_unlock(&s->kek_lock);
	free(hex);
	free(wrapped);
	return err;
}

/* ---- loading ------------------------------------------------------------------ */

static int parse_info(const PGresult *res, const char *name, struct kc_key_info *info)
{
	int64_t latest, mindec, minenc;
	memset(info, 0, sizeof(*info));
	snprintf(info->name, sizeof(info->name), "%s", name);
	snprintf(info->type, sizeof(info->type), "%s", mica_db_get(res, 0, 0));
	snprintf(info->owner, sizeof(info->owner), "%s", mica_db_get(res, 0, 1));
	if (mica_db_get_int64(res, 0, 2, &latest) || mica_db_get_int64(res, 0, 3, &mindec) ||
	    mica_db_get_int64(res, 0, 4, &minenc))
		return MICA_EDB;
	info->latest = (uint32_t)latest;
	info->min_decryption = (uint32_t)mindec;
	info->min_encryption = (uint32_t)minenc;
	info->deletion_allowed = strcmp(mica_db_get(res, 0, 5), "t") == 0;
	info->bits = strcmp(info->type, "aes128-gcm") == 0 ? 128 : 256;
	return 0;
}

/* Reads key |name| with all its versions from the database and unseals them. */
static int load_key(kc_service *s, mica_db *db, const char *name, struct kc_key **out)
{
	PGresult *res = NULL;
	const char *p[1] = {name};
	struct kc_key *k = NULL;
	const kc_hsm_key *kek;
	uint8_t aad[128];
	int err;

	*out = NULL;
	err = mica_db_exec(
		db,
		"SELECT type, owner, latest_version, min_decryption_version,"
		" min_encryption_version, deletion_allowed FROM keycenter.key WHERE name = $1",
		1, p, &res);
	if (err)
		goto out;
	if (PQntuples(res) != 1) {
		err = MICA_ENOTFOUND;
		goto out;
	}
	err = MICA_ENOMEM;
	if (!(k = calloc(1, sizeof(*k))))
		goto out;
	if ((err = parse_info(res, name, &k->info)) != 0)
		goto out;
	PQclear(res);
	res = NULL;
	if ((err = kc_kek_handle(s, k->info.owner, &kek)) != 0)
		goto out;
	err = mica_db_exec(db,
			   "SELECT version, sealed FROM keycenter.key_version WHERE name = $1"
			   " ORDER BY version",
			   1, p, &res);
	if (err)
		goto out;
	k->nversions = k->info.latest;
	err = MICA_ENOMEM;
	if (!(k->material = secure_alloc((size_t)(k->nversions ? k->nversions : 1) * 32)))
		goto out;
	for (int r = 0; r < PQntuples(res); r++) {
		int64_t v;
		uint8_t *sealed = NULL, *pt = NULL;
		size_t sl = 0, pl = 0;
		if ((err = mica_db_get_int64(res, r, 0, &v)) != 0 || v < 1 || v > k->nversions ||
		    (err = mica_db_get_bytea(res, r, 1, &sealed, &sl)) != 0) {
			err = err ? err : MICA_EDB;
			goto out;
		}
		size_t al = material_aad(aad, sizeof(aad), name, (uint32_t)v);
		err = kc_hsm_open_sealed(s->hsm, kek, aad, al, sealed, sl, &pt, &pl);
		free(sealed);
		if (err == 0 && pl != (size_t)k->info.bits / 8)
			err = MICA_EAUTH;
		if (err) {
			MICA_LOG(MICA_LOG_ERROR,
				 "keycenter: version %lld of key %s does not unseal: %s",
				 (long long)v, name, mica_strerror(err));
			if (pt) {
				mica_wipe(pt, pl);
				free(pt);
			}
			goto out;
		}
		memcpy(k->material[v - 1], pt, pl);
		mica_wipe(pt, pl);
		free(pt);
	}
	k->loaded_ms = mica_clock_ms();
	*out = k;
	k = NULL;
	err = 0;
out:
	PQclear(res);
	key_free(k);
	return err;
}

static struct kc_key *cache_find(kc_service *s, const char *name)
{
	for (struct kc_key *k = s->buckets[bucket_of(name)]; k; k = k->next)
		if (strcmp(k->info.name, name) == 0)
			return k;
	return NULL;
}

/* Replaces (or inserts) the cached entry for k->info.name; frees the old. */
static void cache_put(kc_service *s, struct kc_key *k)
{
	pthread_rwlock_wrlock(&s->keys_lock);
	struct kc_key **pp = &s->buckets[bucket_of(k->info.name)];
	for (; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->info.name, k->info.name) == 0) {
			struct kc_key *old = *pp;
			k->next = old->next;
			*pp = k;
			pthread_rwlock_unlock(&s->keys_lock);
			key_free(old);
			return;
		}
	k->next = NULL;
	*pp = k;
	pthread_rwlock_unlock(&s->keys_lock);
}

void kc_key_forget(kc_service *s, const char *name)
{
	pthread_rwlock_wrlock(&s->keys_lock);
	struct kc_key **pp = &s->buckets[bucket_of(name)], *gone = NULL;
	for (; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->info.name, name) == 0) {
			gone = *pp;
			*pp = gone->next;
			break;
		}
	pthread_rwlock_unlock(&s->keys_lock);
	key_free(gone);
}

/* Makes sure |name| is cached and fresh (loaded within CACHE_TTL_MS, and
 * holding |version| when non-zero). An entry past its TTL is reloaded by the
 * first caller that sees it; until that finishes, and for at most
 * REFRESH_GRACE_MS, the others use it as it is (a reload that started a few
 * milliseconds later would have served them the same). Loading reads
 * PostgreSQL and unseals in the HSM, which an event thread must not wait
 * for: there the caller gets MICA_EWOULDBLOCK and moves its request to the
 * blocking pool (mica_http_run_blocking()), where the load happens, the
 * refresh of a stale entry included (whether or not it was claimed). */
static int ensure_cached(kc_service *s, const char *name, uint32_t version)
{
	struct kc_key *k, *fresh = NULL;
	int load, err, may_block = mica_thread_may_block();
	mica_db *db;

	pthread_rwlock_rdlock(&s->keys_lock);
	k = cache_find(s, name);
	int64_t age = k ? mica_clock_ms() - k->loaded_ms : 0;
	if (!k || (version && version > k->nversions) || age > CACHE_TTL_MS + REFRESH_GRACE_MS)
		load = 1;
	else if (age > CACHE_TTL_MS)
		load = may_block || atomic_exchange(&k->refreshing, 1) == 0;
	else
		load = 0;
	pthread_rwlock_unlock(&s->keys_lock);
	if (!load)
		return 0;
	if (!may_block)
		return MICA_EWOULDBLOCK;
	if (!(db = mica_db_thread()))
		err = MICA_EDBCONN;
	else
		err = load_key(s, db, name, &fresh);
	if (err == MICA_ENOTFOUND)
		kc_key_forget(s, name);
	if (err) {
		/* Let the next caller try again. */
		pthread_rwlock_rdlock(&s->keys_lock);
		if ((k = cache_find(s, name)) != NULL)
			atomic_store(&k->refreshing, 0);
		pthread_rwlock_unlock(&s->keys_lock);
		return err;
	}
	cache_put(s, fresh);
	return 0;
}

int kc_key_info(kc_service *s, const char *name, struct kc_key_info *info)
{
	int err = ensure_cached(s, name, 0);
	if (err)
		return err;
	pthread_rwlock_rdlock(&s->keys_lock);
	struct kc_key *k = cache_find(s, name);
	if (k)
		*info = k->info;
	pthread_rwlock_unlock(&s->keys_lock);
	return k ? 0 : MICA_ENOTFOUND;
}

int kc_key_material(kc_service *s, const char *name, uint32_t version, uint8_t material[32],
		    int *bits, uint32_t *used_version, struct kc_key_info *info)
{
	int err = ensure_cached(s, name, version);
	if (err)
		return err;
	pthread_rwlock_rdlock(&s->keys_lock);
	struct kc_key *k = cache_find(s, name);
	uint32_t v = version ? version : k ? k->info.latest : 0;
	if (!k || v < 1 || v > k->nversions) {
		err = MICA_ENOTFOUND;
	} else {
		memcpy(material, k->material[v - 1], 32);
		*bits = k->info.bits;
		*used_version = v;
		if (info)
			*info = k->info;
	}
	pthread_rwlock_unlock(&s->keys_lock);
	return err;
}

/* ---- mutations ------------------------------------------------------------------ */

struct new_version {
	kc_service *s;
	const char *name, *type, *owner;
	const kc_hsm_key *kek;
	int bits;
	uint32_t version; /* out: the version written */
};

/* Generates material for |nv->version|, seals it in the HSM and stores it. */
static int store_version(mica_db *db, struct new_version *nv)
{
	uint8_t material[32], aad[128], *sealed = NULL;
	size_t sl = 0, al;
	char *hex = NULL, vbuf[16];
	int err;

	if ((err = mica_random(material, (size_t)nv->bits / 8)) != 0)
		goto out;
	al = material_aad(aad, sizeof(aad), nv->name, nv->version);
	if ((err = kc_hsm_seal(nv->s->hsm, nv->kek, aad, al, material, (size_t)nv->bits / 8,
			       &sealed, &sl)) != 0)
		goto out;
	if (!(hex = mica_db_bytea_encode(sealed, sl))) {
		err = MICA_ENOMEM;
		goto out;
	}
	snprintf(vbuf, sizeof(vbuf), "%u", nv->version);
	const char *p[3] = {nv->name, vbuf, hex};
	err = mica_db_exec(
		db, "INSERT INTO keycenter.key_version (name, version, sealed) VALUES ($1, $2, $3)",
		3, p, NULL);
out:
	mica_wipe(material, sizeof(material));
	free(sealed);
	free(hex);
	return err;
}

static int create_tx(mica_db *db, void *arg)
{
	struct new_version *nv = arg;
	const char *p[3] = {nv->name, nv->type, nv->owner};
	int err = mica_db_exec(db,
			       "INSERT INTO keycenter.key (name, type, owner) VALUES ($1, $2, $3)",
			       3, p, NULL);
	if (err)
		return err;
	nv->version = 1;
	return store_version(db, nv);
}

int kc_key_create(kc_service *s, const char *name, const char *type, const char *owner,
		  struct kc_key_info *info)
{
	struct new_version nv = {.s = s, .name = name, .type = type, .owner = owner};
	mica_db *db = mica_db_thread();
	int err;

	if (!db)
		return MICA_EDBCONN;
	nv.bits = strcmp(type, "aes128-gcm") == 0 ? 128 : 256;
	if ((err = kc_kek_handle(s, owner, &nv.kek)) != 0)
		return err;
	if ((err = mica_db_tx(db, MICA_DB_READ_COMMITTED, create_tx, &nv)) != 0)
		return err;
	kc_key_forget(s, name);
	return kc_key_info(s, name, info);
}

static int rotate_tx(mica_db *db, void *arg)
{
	struct new_version *nv = arg;
	PGresult *res = NULL;
	const char *p[1] = {nv->name};
	int64_t v;
	int err = mica_db_exec(
		db,
		"UPDATE keycenter.key SET latest_version = latest_version + 1,"
		" updated_at = now() WHERE name = $1 RETURNING latest_version, owner, type",
		1, p, &res);
	if (err)
		return err;
	if (PQntuples(res) != 1) {
		PQclear(res);
		return MICA_ENOTFOUND;
	}
	err = mica_db_get_int64(res, 0, 0, &v);
	nv->bits = strcmp(mica_db_get(res, 0, 2), "aes128-gcm") == 0 ? 128 : 256;
	if (!err)
		err = kc_kek_handle(nv->s, mica_db_get(res, 0, 1), &nv->kek);
	PQclear(res);
	if (err)
		return err;
	nv->version = (uint32_t)v;
	return store_version(db, nv);
}

int kc_key_rotate(kc_service *s, const char *name, struct kc_key_info *info)
{
	struct new_version nv = {.s = s, .name = name};
	mica_db *db = mica_db_thread();
	int err;
	if (!db)
		return MICA_EDBCONN;
	if ((err = mica_db_tx(db, MICA_DB_READ_COMMITTED, rotate_tx, &nv)) != 0)
		return err;
	kc_key_forget(s, name);
	return kc_key_info(s, name, info);
}

int kc_key_configure(kc_service *s, const char *name, long min_dec, long min_enc,
		     int deletion_allowed, struct kc_key_info *info, char *why, size_t whylen)
{
	struct kc_key_info cur;
	char a[24], b[24];
	mica_db *db = mica_db_thread();
	int err;

	if ((err = kc_key_info(s, name, &cur)) != 0)
		return err;
	if (min_dec < 0)
		min_dec = cur.min_decryption;
	if (min_enc < 0)
		min_enc = cur.min_encryption;
	if (deletion_allowed < 0)
		deletion_allowed = cur.deletion_allowed;
	if (min_dec < 1 || min_dec > (long)cur.latest) {
		snprintf(why, whylen, "min_decryption_version must be between 1 and %u",
			 cur.latest);
		return MICA_EINVAL;
	}
	if (min_enc != 0 && (min_enc < min_dec || min_enc > (long)cur.latest)) {
		snprintf(why, whylen,
			 "min_encryption_version must be 0 or between min_decryption_version (%ld)"
			 " and %u",
			 min_dec, cur.latest);
		return MICA_EINVAL;
	}
	if (!db)
		return MICA_EDBCONN;
	snprintf(a, sizeof(a), "%ld", min_dec);
	snprintf(b, sizeof(b), "%ld", min_enc);
	const char *p[4] = {name, a, b, deletion_allowed ? "true" : "false"};
	err = mica_db_exec(db,
			   "UPDATE keycenter.key SET min_decryption_version = $2,"
			   " min_encryption_version = $3, deletion_allowed = $4, updated_at = now()"
			   " WHERE name = $1",
			   4, p, NULL);
	if (err)
		return err;
	kc_key_forget(s, name);
	return kc_key_info(s, name, info);
}

int kc_key_delete_tx(kc_service *s, mica_db *db, const char *name)
{
	PGresult *res = NULL;
	const char *p[1] = {name};
	(void)s;
	int err = mica_db_exec(db,
			       "DELETE FROM keycenter.key WHERE name = $1 AND deletion_allowed"
			       " RETURNING name",
			       1, p, &res);
	if (err == 0 && PQntuples(res) != 1)
		err = MICA_ESTATE;
	PQclear(res);
	return err;
}
