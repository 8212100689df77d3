/* davxml.c - the WebDAV request bodies CardDAV clients send, read with
 * libxml2 (docs/decisions.md "CardDAV"): PROPFIND (prop, allprop,
 * propname) and the REPORT addressbook-multiget (RFC 6352 8.7). No network,
 * no DTD loading, no entity substitution; libxml2's own limits on entity
 * amplification stay on. Untrusted input: fuzzed
 * (tests/fuzz/fuzz_cloudsync_davxml.c). */
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <stdlib.h>
#include <string.h>

#include "cloudsync/cloudsync.h"

#define NS_DAV "DAV:"
#define NS_CARD "urn:ietf:params:xml:ns:carddav"

void cs_dav_query_cleanup(cs_dav_query *q)
{
	for (size_t i = 0; i < q->nprops; i++) {
		free(q->props[i].ns);
		free(q->props[i].name);
	}
	for (size_t i = 0; i < q->nhrefs; i++)
		free(q->hrefs[i]);
	free(q->hrefs);
	memset(q, 0, sizeof(*q));
}

static bool is_el(const xmlNode *n, const char *ns, const char *name)
{
	return n && n->type == XML_ELEMENT_NODE && n->ns && n->ns->href &&
	       strcmp((const char *)n->ns->href, ns) == 0 &&
	       strcmp((const char *)n->name, name) == 0;
}

static int add_props(const xmlNode *prop, cs_dav_query *q, const char **why)
{
	for (const xmlNode *c = prop->children; c; c = c->next) {
		if (c->type != XML_ELEMENT_NODE)
			continue;
		if (q->nprops == CS_DAV_MAX_PROPS) {
			*why = "too many properties asked for";
			return MICA_EINVAL;
		}
		cs_dav_prop *p = &q->props[q->nprops];
		p->ns = strdup(c->ns && c->ns->href ? (const char *)c->ns->href : "");
		p->name = strdup((const char *)c->name);
		q->nprops++;
		if (!p->ns || !p->name)
			return MICA_ENOMEM;
	}
	return 0;
}

static int add_href(const xmlNode *href, cs_dav_query *q, const char **why)
{
	if (q->nhrefs == CS_DAV_MAX_HREFS) {
		*why = "too many hrefs in one multiget";
		return MICA_EINVAL;
	}
	if (q->nhrefs % 64 == 0) {
		char **grown = realloc(q->hrefs, (q->nhrefs + 64) * sizeof(*grown));
		if (!grown)
			return MICA_ENOMEM;
		q->hrefs = grown;
	}
	xmlChar *text = xmlNodeGetContent(href);
	if (!text)
		return MICA_ENOMEM;
	q->hrefs[q->nhrefs] = strdup((const char *)text);
	xmlFree(text);
	return q->hrefs[q->nhrefs++] ? 0 : MICA_ENOMEM;
}

int cs_dav_parse(const char *body, size_t len, bool report, cs_dav_query *q, const char **why)
{
	xmlDoc *doc = NULL;
	int err = 0;
	memset(q, 0, sizeof(*q));
	*why = NULL;
	q->mode = CS_DAV_ALLPROP;
	if (!report && len == 0) /* RFC 4918 9.1: an empty PROPFIND is allprop */
		return 0;
	if (len > INT32_MAX ||
	    !(doc = xmlReadMemory(body, (int)len, "request.xml", NULL,
				  XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING))) {
		*why = "the body is not well-formed XML";
		return MICA_EINVAL;
	}
	const xmlNode *root = xmlDocGetRootElement(doc);
	if (report) {
		if (!is_el(root, NS_CARD, "addressbook-multiget")) {
			*why = "only the addressbook-multiget report is supported";
			err = MICA_EDENIED;
			goto out;
		}
		q->mode = CS_DAV_PROP;
		for (const xmlNode *c = root->children; err == 0 && c; c = c->next) {
			if (is_el(c, NS_DAV, "prop"))
				err = add_props(c, q, why);
			else if (is_el(c, NS_DAV, "href"))
				err = add_href(c, q, why);
		}
		goto out;
	}
	if (!is_el(root, NS_DAV, "propfind")) {
		*why = "a PROPFIND body is a DAV:propfind element";
		err = MICA_EINVAL;
		goto out;
	}
	for (const xmlNode *c = root->children; err == 0 && c; c = c->next) {
		if (is_el(c, NS_DAV, "prop")) {
			q->mode = CS_DAV_PROP;
			err = add_props(c, q, why);
		} else if (is_el(c, NS_DAV, "propname")) {
			q->mode = CS_DAV_PROPNAME;
		} else if (is_el(c, NS_DAV, "allprop")) {
			q->mode = CS_DAV_ALLPROP;
		}
	}
out:
	xmlFreeDoc(doc);
	if (err) {
		if (!*why)
			*why = "out of memory";
		cs_dav_query_cleanup(q);
	}
	return err;
}
