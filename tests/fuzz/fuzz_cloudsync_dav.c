/* fuzz_cloudsync_dav.c - the CardDAV inputs on untrusted bytes: the input as
 * a PROPFIND body and as a REPORT body (cs_dav_parse, libxml2 underneath),
 * and as a vCard (cs_vcard_check). Invariants: a parsed query holds at most
 * the property and href limits, every property has a name, a REPORT is a
 * multiget of explicit properties; a refusal says why and leaves the query
 * empty; an accepted vCard is UTF-8 without NUL that starts with BEGIN:VCARD
 * (any case; blank lines before it are allowed) and its UID fits the
 * buffer. */
#include <libxml/parser.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cloudsync/cloudsync.h"
#include "form.h"
#include "fuzz_check.h"

static void query(const uint8_t *data, size_t size, bool report)
{
	cs_dav_query q;
	const char *why = NULL;
	int err = cs_dav_parse((const char *)data, size, report, &q, &why);
	if (err) {
		CHECK(why != NULL && q.nprops == 0 && q.nhrefs == 0 && !q.hrefs);
		return;
	}
	CHECK(q.nprops <= CS_DAV_MAX_PROPS && q.nhrefs <= CS_DAV_MAX_HREFS);
	CHECK(!report || q.mode == CS_DAV_PROP);
	CHECK(report || q.nhrefs == 0);
	for (size_t i = 0; i < q.nprops; i++)
		CHECK(q.props[i].name && q.props[i].name[0] && q.props[i].ns);
	for (size_t i = 0; i < q.nhrefs; i++)
		CHECK(q.hrefs[i] != NULL);
	cs_dav_query_cleanup(&q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int init;
	if (!init) {
		xmlInitParser();
		init = 1;
	}
	query(data, size, false);
	query(data, size, true);
	char uid[16];
	const char *why = NULL;
	if (cs_vcard_check((const char *)data, size, uid, sizeof(uid), &why) == 0) {
		const char *t = (const char *)data;
		CHECK(mica_utf8_valid(t, size) && !memchr(t, '\0', size));
		size_t skip = 0;
		while (skip < size && (t[skip] == '\r' || t[skip] == '\n'))
			skip++;
		CHECK(size - skip >= 11 && strncasecmp(t + skip, "BEGIN:VCARD", 11) == 0);
		CHECK(strlen(uid) < sizeof(uid));
	} else {
		CHECK(why != NULL);
	}
	return 0;
}
