/* dav.c - CardDAV (RFC 6352) over the contacts records: discovery
 * (/.well-known/carddav, the principal, the address book home), PROPFIND
 * with Depth 0 and 1, the addressbook-multiget REPORT, and GET, PUT and
 * DELETE of vCards with entity tags, so that an address book client
 * (vdirsyncer) syncs both ways. A vCard is the contacts record
 * {"vcard": "<text>"} with the same id and version: what CardDAV writes,
 * record sync pulls, and the other way round (docs/api/cloudsync.md,
 * "CardDAV"). Clients authenticate with HTTP Basic whose password is a
 * session token (an app password), or with Bearer. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cloudsync/cloudsync.h"
#include "crypto.h"

#define NS_DAV "DAV:"
#define NS_CARD "urn:ietf:params:xml:ns:carddav"
#define NS_CS "http://calendarserver.org/ns/"
#define BOOK "contacts" /* the one address book: the contacts module */
#define PRINCIPAL_HREF "/dav/principal/"
#define HOME_HREF "/dav/addressbooks/"
#define BOOK_HREF "/dav/addressbooks/" BOOK "/"
#define VCARD_TYPE "text/vcard; charset=utf-8"

enum res_kind { R_PRINCIPAL, R_HOME, R_BOOK, R_CARD };

/* ---- authentication -------------------------------------------------------------- */

/* The user of a DAV request: Basic (any user name; the password is a
 * session token) or Bearer. On failure the reply is set and 0 returned. */
static int dav_user(cs_service *s, const mica_http_req *req, mica_http_resp *resp, int64_t *uid)
{
	const char *h = mica_http_header(req, "Authorization");
	char bearer[16 + MICA_AUTH_TOKEN_LEN + 1] = "";
	if (h && strncasecmp(h, "Basic ", 6) == 0) {
		uint8_t *raw = NULL;
		size_t len = 0;
		if (mica_base64_decode_alloc(h + 6, strlen(h + 6), &raw, &len) == 0) {
			const char *colon = memchr(raw, ':', len);
			size_t tl = colon ? len - (size_t)(colon + 1 - (const char *)raw) : 0;
			if (colon && tl == MICA_AUTH_TOKEN_LEN)
				snprintf(bearer, sizeof(bearer), "Bearer %.*s", (int)tl, colon + 1);
			mica_wipe(raw, len);
			free(raw);
		}
		h = bearer;
	}
	int ok = cs_signed_in(s, h, true, resp, uid);
	mica_wipe(bearer, sizeof(bearer));
	return ok;
}

/* ---- the XML we write --------------------------------------------------------------- */

static void xml_text(FILE *f, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		switch (s[i]) {
		case '&':
			fputs("&amp;", f);
			break;
		case '<':
			fputs("&lt;", f);
			break;
		case '>':
			fputs("&gt;", f);
			break;
		case '"':
			fputs("&quot;", f);
			break;
		case '\r':
			fputs("&#13;", f);
			break;
		default:
			fputc(s[i], f);
		}
	}
}

/* A vCard for a record: its "vcard" member as stored, or one made from
 * the plain members fn, tel and email (a record written through record sync
 * without a vCard). *len its length; malloc'd. */
static char *vcard_of(const char *id, json_t *data, size_t *len)
{
	json_t *v = json_object_get(data, "vcard");
	char *out = NULL;
	if (json_is_string(v)) {
		*len = json_string_length(v);
		out = malloc(*len + 1);
		if (out)
			memcpy(out, json_string_value(v), *len + 1);
		return out;
	}
	FILE *f = open_memstream(&out, len);
	if (!f)
		return NULL;
	const char *fn = json_string_value(json_object_get(data, "fn"));
	fprintf(f, "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:%s\r\nFN:", id);
	for (const char *c = fn ? fn : id; *c; c++) {
		if (*c == ',' || *c == ';' || *c == '\\')
			fputc('\\', f);
		if (*c == '\n')
			fputs("\\n", f);
		else if (*c != '\r')
			fputc(*c, f);
	}
	fputs("\r\n", f);
	static const char *const members[][2] = {{"tel", "TEL"}, {"email", "EMAIL"}};
	for (size_t m = 0; m < 2; m++) {
		json_t *x = json_object_get(data, members[m][0]);
		if (json_is_string(x) && !strpbrk(json_string_value(x), "\r\n"))
			fprintf(f, "%s:%s\r\n", members[m][1], json_string_value(x));
	}
	fputs("END:VCARD\r\n", f);
	if (fclose(f) != 0) {
		free(out);
		return NULL;
	}
	return out;
}

/* Writes property (ns, name) of a resource into |f| and returns 1, or
 * returns 0 when the resource has no such property. |card| is the record
 * (R_CARD), |ctag| the address book's last change (R_BOOK). */
static int prop(FILE *f, enum res_kind k, json_t *card, int64_t ctag, const char *ns,
		const char *name, bool with_value)
{
	bool dav = strcmp(ns, NS_DAV) == 0, cardns = strcmp(ns, NS_CARD) == 0;
#define IS(n) (strcmp(name, n) == 0)
	if (dav && IS("resourcetype")) {
		static const char *const types[] = {"<d:principal/>", "<d:collection/>",
						    "<d:collection/><card:addressbook/>", ""};
		fprintf(f, "<d:resourcetype>%s</d:resourcetype>", with_value ? types[k] : "");
	} else if (dav && IS("current-user-principal")) {
		fprintf(f, "<d:current-user-principal>%s</d:current-user-principal>",
			with_value ? "<d:href>" PRINCIPAL_HREF "</d:href>" : "");
	} else if (dav && IS("principal-URL") && k == R_PRINCIPAL) {
		fprintf(f, "<d:principal-URL>%s</d:principal-URL>",
			with_value ? "<d:href>" PRINCIPAL_HREF "</d:href>" : "");
	} else if (cardns && IS("addressbook-home-set") && k == R_PRINCIPAL) {
		fprintf(f, "<card:addressbook-home-set>%s</card:addressbook-home-set>",
			with_value ? "<d:href>" HOME_HREF "</d:href>" : "");
	} else if (dav && IS("displayname") && k != R_CARD) {
		static const char *const names[] = {"mica user", "Address books", "Contacts", ""};
		fprintf(f, "<d:displayname>%s</d:displayname>", with_value ? names[k] : "");
	} else if (dav && IS("getetag") && k == R_CARD) {
		fprintf(f, "<d:getetag>");
		if (with_value)
			fprintf(f, "&quot;%" JSON_INTEGER_FORMAT "&quot;",
				json_integer_value(json_object_get(card, "version")));
		fprintf(f, "</d:getetag>");
	} else if (dav && IS("getcontenttype") && k == R_CARD) {
		fprintf(f, "<d:getcontenttype>%s</d:getcontenttype>", with_value ? VCARD_TYPE : "");
	} else if (strcmp(ns, NS_CS) == 0 && IS("getctag") && k == R_BOOK) {
		fprintf(f, "<cs:getctag>");
		if (with_value)
			fprintf(f, "%" PRId64, ctag);
		fprintf(f, "</cs:getctag>");
	} else if (dav && IS("supported-report-set") && k == R_BOOK) {
		fprintf(f, "<d:supported-report-set>%s</d:supported-report-set>",
			with_value ? "<d:supported-report><d:report><card:addressbook-multiget/>"
				     "</d:report></d:supported-report>"
				   : "");
	} else if (cardns && IS("supported-address-data") && k == R_BOOK) {
		fprintf(f, "<card:supported-address-data>%s</card:supported-address-data>",
			with_value ? "<card:address-data-type content-type=\"text/vcard\""
				     " version=\"3.0\"/>"
				   : "");
	} else if (cardns && IS("address-data") && k == R_CARD) {
		fprintf(f, "<card:address-data>");
		size_t len = 0;
		char *v = with_value ? vcard_of(json_string_value(json_object_get(card, "id")),
						json_object_get(card, "data"), &len)
				     : NULL;
		if (v)
			xml_text(f, v, len);
		free(v);
		fprintf(f, "</card:address-data>");
	} else {
		return 0;
	}
#undef IS
	return 1;
}

/* What allprop and propname list (address-data only when asked for). */
static const cs_dav_prop all_props[] = {
	{NS_DAV, "resourcetype"},	    {NS_DAV, "displayname"},
	{NS_DAV, "current-user-principal"}, {NS_DAV, "principal-URL"},
	{NS_CARD, "addressbook-home-set"},  {NS_DAV, "getetag"},
	{NS_DAV, "getcontenttype"},	    {NS_CS, "getctag"},
	{NS_DAV, "supported-report-set"},   {NS_CARD, "supported-address-data"},
};

/* One <d:response> for the resource at |href|: the properties it has in a
 * 200 propstat, those it lacks in a 404 one. */
static void response(FILE *f, const char *href, enum res_kind k, json_t *card, int64_t ctag,
		     const cs_dav_query *q)
{
	const cs_dav_prop *props = q->mode == CS_DAV_PROP ? q->props : all_props;
	size_t n = q->mode == CS_DAV_PROP ? q->nprops : sizeof(all_props) / sizeof(all_props[0]);
	char *missing = NULL;
	size_t mlen = 0;
	FILE *m = open_memstream(&missing, &mlen);
	fprintf(f, "<d:response><d:href>");
	xml_text(f, href, strlen(href));
	fprintf(f, "</d:href><d:propstat><d:prop>");
	for (size_t i = 0; i < n; i++) {
		if (prop(f, k, card, ctag, props[i].ns, props[i].name,
			 q->mode != CS_DAV_PROPNAME) ||
		    !m || q->mode != CS_DAV_PROP)
			continue;
		fprintf(m, "<x:");
		xml_text(m, props[i].name, strlen(props[i].name));
		fprintf(m, " xmlns:x=\"");
		xml_text(m, props[i].ns, strlen(props[i].ns));
		fprintf(m, "\"/>");
	}
	fprintf(f, "</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat>");
	if (m && fclose(m) == 0 && mlen)
		fprintf(f,
			"<d:propstat><d:prop>%s</d:prop><d:status>HTTP/1.1 404 Not Found</d:status>"
			"</d:propstat>",
			missing);
	free(missing);
	fprintf(f, "</d:response>");
}

static void card_href(char *out, size_t cap, const char *id)
{
	snprintf(out, cap, BOOK_HREF "%s.vcf", id);
}

/* The record id of a card's last path segment "<id>.vcf", or NULL. */
static const char *card_id(const char *file, char *id, size_t cap)
{
	size_t n = file ? strlen(file) : 0;
	if (n <= 4 || n - 4 >= cap || strcmp(file + n - 4, ".vcf") != 0)
		return NULL;
	memcpy(id, file, n - 4);
	id[n - 4] = '\0';
	return cs_record_id_ok(id) ? id : NULL;
}

/* A multiget href (a path or a URL, percent-encoded or not) as a card id. */
static const char *href_id(const char *href, char *id, size_t cap)
{
	char path[512];
	size_t n = 0;
	const char *p = strstr(href, "://");
	if (p && !(p = strchr(p + 3, '/')))
		return NULL;
	for (p = p ? p : href; *p && n < sizeof(path) - 1; p++) {
		if (*p == '%' && p[1] && p[2]) {
			uint8_t b;
			size_t got;
			if (mica_hex_decode(p + 1, 2, &b, 1, &got) != 0 || got != 1)
				return NULL;
			path[n++] = (char)b;
			p += 2;
		} else {
			path[n++] = *p;
		}
	}
	path[n] = '\0';
	if (strncmp(path, BOOK_HREF, sizeof(BOOK_HREF) - 1) != 0)
		return NULL;
	return card_id(path + sizeof(BOOK_HREF) - 1, id, cap);
}

/* ---- replies ------------------------------------------------------------------------- */

static void reply_multistatus(mica_http_resp *resp, char *body, size_t len)
{
	mica_http_reply_raw(resp, 207, "application/xml; charset=utf-8", body, len);
}

static FILE *multistatus_open(char **body, size_t *len)
{
	FILE *f = open_memstream(body, len);
	if (f)
		fputs("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:multistatus xmlns:d=\"DAV:\""
		      " xmlns:card=\"" NS_CARD "\" xmlns:cs=\"" NS_CS "\">",
		      f);
	return f;
}

static int multistatus_close(FILE *f, mica_http_resp *resp, char **body, size_t *len)
{
	fputs("</d:multistatus>\n", f);
	if (fclose(f) != 0) {
		free(*body);
		mica_http_reply_error(resp, 500, "internal_error", "out of memory");
		return 0;
	}
	reply_multistatus(resp, *body, *len);
	return 1;
}

static bool depth_one(const mica_http_req *req)
{
	const char *d = mica_http_header(req, "Depth");
	return d && (strcmp(d, "1") == 0 || strcasecmp(d, "infinity") == 0);
}

/* Reads the body of a PROPFIND or REPORT; on failure the reply is set. */
static int read_query(const mica_http_req *req, mica_http_resp *resp, bool report, cs_dav_query *q)
{
	const char *why = NULL;
	int err = cs_dav_parse(req->body ? req->body : "", req->body_len, report, q, &why);
	if (err == MICA_EDENIED)
		mica_http_reply_error(resp, 403, "report_not_supported", "%s", why);
	else if (err == MICA_ENOMEM)
		mica_http_reply_error(resp, 500, "internal_error", "out of memory");
	else if (err)
		mica_http_reply_error(resp, 400, "bad_dav_body", "%s", why);
	return err == 0;
}

/* ---- handlers ------------------------------------------------------------------------ */

void cs_dav_well_known(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	(void)req;
	(void)svc;
	mica_http_reply_raw(resp, 301, "text/plain", strdup(""), 0);
	mica_http_add_header(resp, "Location", "/dav/");
}

/* PROPFIND on the principal or the home: fixed resources. */
static void propfind_fixed(const mica_http_req *req, mica_http_resp *resp, cs_service *s,
			   enum res_kind k, const char *href)
{
	int64_t uid;
	cs_dav_query q;
	char *body = NULL;
	size_t len = 0;
	int64_t ctag = 0;
	bool book = k == R_HOME && depth_one(req);
	mica_problem p = MICA_PROBLEM_INIT;
	FILE *f;
	if (!dav_user(s, req, resp, &uid) || !read_query(req, resp, false, &q))
		return;
	if (book && cs_module_token(s, uid, BOOK, &ctag, &p) != 0) {
		mica_http_reply_problem(resp, &p);
	} else if ((f = multistatus_open(&body, &len)) != NULL) {
		response(f, href, k, NULL, 0, &q);
		if (book)
			response(f, BOOK_HREF, R_BOOK, NULL, ctag, &q);
		multistatus_close(f, resp, &body, &len);
	} else {
		mica_http_reply_error(resp, 500, "internal_error", "out of memory");
	}
	cs_dav_query_cleanup(&q);
}

void cs_dav_propfind_root(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	propfind_fixed(req, resp, svc, R_PRINCIPAL, "/dav/");
}
void cs_dav_propfind_principal(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	propfind_fixed(req, resp, svc, R_PRINCIPAL, PRINCIPAL_HREF);
}
void cs_dav_propfind_home(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	propfind_fixed(req, resp, svc, R_HOME, HOME_HREF);
}

static int known_book(const mica_http_req *req, mica_http_resp *resp)
{
	const char *book = mica_http_param(req, "book");
	if (book && strcmp(book, BOOK) == 0)
		return 1;
	mica_http_reply_error(resp, 404, "not_found", "the one address book is " BOOK_HREF);
	return 0;
}

static bool has_card(json_t *cards, const char *id)
{
	size_t i;
	json_t *card;
	json_array_foreach(cards, i, card)
	{
		if (strcmp(id, json_string_value(json_object_get(card, "id"))) == 0)
			return true;
	}
	return false;
}

/* One 404 response for |href| (multiget, RFC 6352 8.7). */
static void not_found(FILE *f, const char *href)
{
	fprintf(f, "<d:response><d:href>");
	xml_text(f, href, strlen(href));
	fprintf(f, "</d:href><d:status>HTTP/1.1 404 Not Found</d:status></d:response>");
}

/* What a listing answers: the book itself (|self|), the cards named by
 * ids[0..n) (every card when |ids| is NULL), and a 404 response for each of
 * them that does not exist and for each of other[0..nother) (multiget hrefs
 * that name no card of the book). With |single|, a card that does not exist
 * is a 404 answer instead (PROPFIND on one card). */
struct listing {
	bool self, single;
	const char *const *ids, *const *other;
	size_t n, nother;
};

static void book_listing(mica_http_resp *resp, cs_service *s, int64_t uid, const cs_dav_query *q,
			 const struct listing *l)
{
	json_t *cards = NULL;
	int64_t ctag = 0;
	char *body = NULL, href[256];
	size_t len = 0;
	mica_problem p = MICA_PROBLEM_INIT;
	bool data = false;
	for (size_t i = 0; i < q->nprops; i++)
		data |= strcmp(q->props[i].name, "address-data") == 0;
	if (cs_records_live(s, uid, BOOK, l->ids, l->n, data, &cards, &ctag, &p) != 0) {
		mica_http_reply_problem(resp, &p);
		return;
	}
	if (l->single && json_array_size(cards) == 0) {
		json_decref(cards);
		mica_http_reply_error(resp, 404, "record_not_found", "no such card");
		return;
	}
	FILE *f = multistatus_open(&body, &len);
	if (!f) {
		json_decref(cards);
		mica_http_reply_error(resp, 500, "internal_error", "out of memory");
		return;
	}
	if (l->self)
		response(f, BOOK_HREF, R_BOOK, NULL, ctag, q);
	size_t i;
	json_t *card;
	json_array_foreach(cards, i, card)
	{
		card_href(href, sizeof(href), json_string_value(json_object_get(card, "id")));
		response(f, href, R_CARD, card, ctag, q);
	}
	for (size_t k = 0; l->ids && k < l->n; k++) {
		if (has_card(cards, l->ids[k]))
			continue;
		card_href(href, sizeof(href), l->ids[k]);
		not_found(f, href);
	}
	for (size_t k = 0; k < l->nother; k++)
		not_found(f, l->other[k]);
	json_decref(cards);
	multistatus_close(f, resp, &body, &len);
}

void cs_dav_propfind_book(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	cs_service *s = svc;
	int64_t uid;
	cs_dav_query q;
	if (!dav_user(s, req, resp, &uid) || !known_book(req, resp) ||
	    !read_query(req, resp, false, &q))
		return;
	if (depth_one(req)) {
		book_listing(resp, s, uid, &q, &(struct listing){.self = true});
	} else {
		char *body = NULL;
		size_t len = 0;
		int64_t ctag = 0;
		mica_problem p = MICA_PROBLEM_INIT;
		FILE *f;
		if (cs_module_token(s, uid, BOOK, &ctag, &p) != 0)
			mica_http_reply_problem(resp, &p);
		else if ((f = multistatus_open(&body, &len)) != NULL) {
			response(f, BOOK_HREF, R_BOOK, NULL, ctag, &q);
			multistatus_close(f, resp, &body, &len);
		} else
			mica_http_reply_error(resp, 500, "internal_error", "out of memory");
	}
	cs_dav_query_cleanup(&q);
}

void cs_dav_report(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	cs_service *s = svc;
	int64_t uid;
	cs_dav_query q;
	if (!dav_user(s, req, resp, &uid) || !known_book(req, resp) ||
	    !read_query(req, resp, true, &q))
		return;
	size_t slots = q.nhrefs ? q.nhrefs : 1, n = 0, nother = 0;
	const char **ids = calloc(slots, sizeof(*ids)), **other = calloc(slots, sizeof(*other));
	char(*buf)[160] = calloc(slots, sizeof(*buf));
	if (!ids || !other || !buf) {
		mica_http_reply_error(resp, 500, "internal_error", "out of memory");
	} else {
		for (size_t i = 0; i < q.nhrefs; i++) {
			if (href_id(q.hrefs[i], buf[n], sizeof(buf[n])))
				ids[n] = buf[n], n++;
			else
				other[nother++] = q.hrefs[i];
		}
		book_listing(
			resp, s, uid, &q,
			&(struct listing){.ids = ids, .n = n, .other = other, .nother = nother});
	}
	free(ids);
	free(other);
	free(buf);
	cs_dav_query_cleanup(&q);
}

/* The card of the path ({file}); on failure the reply is set. */
static const char *path_card(const mica_http_req *req, mica_http_resp *resp, char *id, size_t cap)
{
	if (!known_book(req, resp))
		return NULL;
	if (card_id(mica_http_param(req, "file"), id, cap))
		return id;
	mica_http_reply_error(resp, 404, "not_found",
			      "a card is <id>.vcf, the id 1-128 of A-Z a-z 0-9 . _ ~ -");
	return NULL;
}

void cs_dav_propfind_card(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	cs_service *s = svc;
	int64_t uid;
	char id[160];
	cs_dav_query q;
	if (!dav_user(s, req, resp, &uid) || !path_card(req, resp, id, sizeof(id)) ||
	    !read_query(req, resp, false, &q))
		return;
	const char *ids[1] = {id};
	book_listing(resp, s, uid, &q, &(struct listing){.single = true, .ids = ids, .n = 1});
	cs_dav_query_cleanup(&q);
}

void cs_dav_get_card(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	cs_service *s = svc;
	int64_t uid, ctag;
	char id[160], etag[32];
	json_t *cards = NULL;
	mica_problem p = MICA_PROBLEM_INIT;
	if (!dav_user(s, req, resp, &uid) || !path_card(req, resp, id, sizeof(id)))
		return;
	const char *ids[1] = {id};
	if (cs_records_live(s, uid, BOOK, ids, 1, true, &cards, &ctag, &p) != 0) {
		mica_http_reply_problem(resp, &p);
		return;
	}
	json_t *card = json_array_get(cards, 0);
	if (!card) {
		mica_http_reply_error(resp, 404, "record_not_found", "no card %s", id);
	} else {
		size_t len = 0;
		char *v = vcard_of(id, json_object_get(card, "data"), &len);
		mica_http_reply_raw(resp, 200, VCARD_TYPE, v, len);
		snprintf(etag, sizeof(etag), "\"%" JSON_INTEGER_FORMAT "\"",
			 json_integer_value(json_object_get(card, "version")));
		mica_http_add_header(resp, "ETag", etag);
	}
	json_decref(cards);
}

/* PUT and DELETE: one write through record sync, with DAV's preconditions
 * (If-None-Match: * creates, If-Match: "N" replaces version N, neither
 * writes whatever is there); a failed precondition is 412 and keeps no
 * conflict copy (the client refetches). */
static void dav_write(const mica_http_req *req, mica_http_resp *resp, cs_service *s, bool del)
{
	int64_t uid;
	char id[160], etag[32];
	cs_write w = {.deleted = del, .no_copy = true};
	cs_result r;
	mica_problem p = MICA_PROBLEM_INIT;
	if (!dav_user(s, req, resp, &uid) || !path_card(req, resp, id, sizeof(id)))
		return;
	w.id = id;
	const char *im = mica_http_header(req, "If-Match"),
		   *inm = mica_http_header(req, "If-None-Match");
	if (im && cs_parse_version(im, &w.if_match) != 0) {
		/* Not an entity tag of ours: it matches nothing. */
		mica_http_reply_error(resp, 412, "precondition_failed",
				      "If-Match: no such version");
		return;
	}
	w.has_if_match = im != NULL;
	w.unconditional = !im && !(inm && strcmp(inm, "*") == 0);
	if (!del) {
		const char *why = NULL;
		if (cs_vcard_check(req->body ? req->body : "", req->body_len, NULL, 0, &why) != 0) {
			mica_http_reply_error(resp, 415, "bad_vcard", "%s", why);
			return;
		}
		json_t *data =
			json_pack("{s:s%}", "vcard", req->body ? req->body : "", req->body_len);
		w.json = data ? json_dumps(data, JSON_COMPACT) : NULL;
		json_decref(data);
		if (!w.json) {
			mica_http_reply_error(resp, 500, "internal_error", "out of memory");
			return;
		}
		w.json_len = strlen(w.json);
		if (w.json_len > s->cfg->record_max) {
			cs_writes_cleanup(&w, 1);
			mica_http_reply_error(resp, 413, "record_too_large",
					      "a card holds at most %zu bytes", s->cfg->record_max);
			return;
		}
	}
	if (cs_write_batch(s, uid, BOOK, &w, 1, true, &r, &p) != 0) {
		cs_writes_cleanup(&w, 1);
		mica_http_reply_problem(resp, &p);
		return;
	}
	cs_writes_cleanup(&w, 1);
	switch (r.status) {
	case CS_OK:
		mica_http_reply_raw(resp, r.created ? 201 : 204, "text/plain", strdup(""), 0);
		if (!del) {
			snprintf(etag, sizeof(etag), "\"%" PRId64 "\"", r.version);
			mica_http_add_header(resp, "ETag", etag);
		}
		break;
	case CS_CONFLICT:
		mica_http_reply_error(resp, 412, "precondition_failed",
				      "the card is not at the version the request names");
		break;
	case CS_NOT_FOUND:
	case CS_PRECONDITION:
		mica_http_reply_error(resp, 404, "record_not_found", "no card %s", id);
		break;
	}
	cs_results_cleanup(&r, 1);
}

void cs_dav_put_card(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	dav_write(req, resp, svc, false);
}
void cs_dav_delete_card(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	dav_write(req, resp, svc, true);
}
