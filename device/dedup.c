/* dedup.c - the push client's duplicate filter: the SHA-256 digests of the
 * last N message ids delivered, in a ring, optionally kept in a small state
 * file so a restart does not deliver again what the broker redelivers.
 * Format and limits: micadev.h ("The duplicate filter"). */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crypto.h"
#include "device/micadev.h"

#define HEADER "micadev-seen v1"

static int digest(const void *key, size_t len, uint8_t out[MICA_SHA256_LEN])
{
	unsigned int n = 0;
	return EVP_Digest(key, len, out, &n, mica_md_sha256(), NULL) == 1 ? 0 : MICA_ECRYPTO;
}

static void push_digest(dev_dedup *d, const uint8_t h[MICA_SHA256_LEN])
{
	memcpy(d->ring[d->next], h, MICA_SHA256_LEN);
	d->next = (d->next + 1) % d->cap;
	if (d->len < d->cap)
		d->len++;
}

/* Reads the state file: every line after the header, oldest first; the
 * ring keeps the newest cap of them. */
static int load(dev_dedup *d)
{
	FILE *f = fopen(d->path, "r");
	if (!f)
		return errno == ENOENT ? 0 : MICA_EIO;
	char line[128];
	int err = 0;
	if (!fgets(line, sizeof(line), f) || strcmp(line, HEADER "\n") != 0) {
		err = ferror(f) ? MICA_EIO : MICA_EBADHEADER;
		goto out;
	}
	while (fgets(line, sizeof(line), f)) {
		uint8_t h[MICA_SHA256_LEN];
		size_t n = 0;
		if (strlen(line) != 2 * MICA_SHA256_LEN + 1 || line[2 * MICA_SHA256_LEN] != '\n' ||
		    mica_hex_decode(line, 2 * MICA_SHA256_LEN, h, sizeof(h), &n) != 0 ||
		    n != MICA_SHA256_LEN) {
			err = MICA_EBADHEADER;
			goto out;
		}
		push_digest(d, h);
	}
	if (ferror(f))
		err = MICA_EIO;
out:
	fclose(f);
	return err;
}

/* Writes the ring to a temporary file, syncs it and renames it over the
 * state file, so a crash leaves the old file or the new one. */
static int save(const dev_dedup *d)
{
	size_t plen = strlen(d->path);
	char *tmp = malloc(plen + 5);
	if (!tmp)
		return MICA_ENOMEM;
	memcpy(tmp, d->path, plen);
	memcpy(tmp + plen, ".tmp", 5);
	int err = MICA_EIO;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (!f) {
		if (fd >= 0)
			close(fd);
		goto out;
	}
	fputs(HEADER "\n", f);
	size_t first = (d->next + d->cap - d->len) % d->cap;
	for (size_t i = 0; i < d->len; i++) {
		char hex[2 * MICA_SHA256_LEN + 1];
		if (mica_hex_encode(d->ring[(first + i) % d->cap], MICA_SHA256_LEN, hex,
				    sizeof(hex)) != 0)
			break;
		fprintf(f, "%s\n", hex);
	}
	bool ok = fflush(f) == 0 && !ferror(f) && fsync(fileno(f)) == 0;
	if (fclose(f) == 0 && ok && rename(tmp, d->path) == 0)
		err = 0;
out:
	if (err)
		(void)unlink(tmp);
	free(tmp);
	return err;
}

int dev_dedup_init(dev_dedup *d, size_t cap, const char *path)
{
	if (!d)
		return MICA_EINVAL;
	memset(d, 0, sizeof(*d));
	if (cap == 0)
		cap = DEV_DEDUP_DEFAULT_CAP;
	if (cap > DEV_DEDUP_MAX_CAP)
		return MICA_EINVAL;
	d->cap = cap;
	if (!(d->ring = calloc(cap, sizeof(*d->ring))) || (path && !(d->path = strdup(path)))) {
		dev_dedup_cleanup(d);
		return MICA_ENOMEM;
	}
	int err = path ? load(d) : 0;
	if (err)
		dev_dedup_cleanup(d);
	return err;
}

bool dev_dedup_seen(const dev_dedup *d, const void *key, size_t len)
{
	uint8_t h[MICA_SHA256_LEN];
	if (!d || !d->ring || !key || digest(key, len, h) != 0)
		return false;
	/* Newest first: a redelivery is most often of a recent id. */
	for (size_t i = 1; i <= d->len; i++)
		if (memcmp(d->ring[(d->next + d->cap - i) % d->cap], h, sizeof(h)) == 0)
			return true;
	return false;
}

int dev_dedup_add(dev_dedup *d, const void *key, size_t len)
{
	uint8_t h[MICA_SHA256_LEN];
	if (!d || !d->ring || !key)
		return MICA_EINVAL;
	int err = digest(key, len, h);
	if (err)
		return err;
	push_digest(d, h);
	return d->path ? save(d) : 0;
}

void dev_dedup_cleanup(dev_dedup *d)
{
	if (!d)
		return;
	free(d->ring);
	free(d->path);
	d->ring = NULL;
	d->path = NULL;
	d->cap = d->len = d->next = 0;
}
