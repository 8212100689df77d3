/* fuzz_account_questions.c - a PUT /v1/security/questions body through
 * everything the account service does with it before any I/O: lib/http's
 * strict JSON, then acct_questions_parse(). A refusal must be a 400
 * bad_questions or unknown_field; an acceptance (only documented members) must meet the documented
 * limits, counted on the normalised answers. The raw bytes are also normalised into buffers of
 * every small size and of the service's size, and each result (and the
 * length returned) is checked against a plain reference: lower-cased words joined by one space, or,
 * when that does not fit, a prefix of it that does not end in a space. */
#include "account_fuzz.h"
#include "fuzz_check.h"

/* The normalised form of |in|, computed the obvious way; malloc'd. */
static char *reference(const char *in)
{
	size_t n = strlen(in), j = 0;
	char *out = malloc(n + 1);
	CHECK(out);
	for (size_t i = 0; i < n;) {
		while (i < n && isspace((unsigned char)in[i]))
			i++;
		if (i == n)
			break;
		if (j > 0)
			out[j++] = ' ';
		while (i < n && !isspace((unsigned char)in[i]))
			out[j++] = (char)tolower((unsigned char)in[i++]);
	}
	out[j] = '\0';
	return out;
}

static size_t chars(const char *s)
{
	size_t n = 0;
	for (; *s; s++)
		n += ((unsigned char)*s & 0xC0) != 0x80;
	return n;
}

/* acct_answer_normalise(in, out, cap) against the reference |ref|. */
static void check_normalise(const char *in, const char *ref, size_t cap)
{
	char *out = malloc(cap + 1);
	CHECK(out);
	out[cap] = 'X'; /* a canary one past the buffer */
	CHECK(acct_answer_normalise(in, out, cap) == strlen(ref));
	CHECK(out[cap] == 'X');
	if (cap > 0) {
		size_t n = strnlen(out, cap);
		CHECK(n < cap);
		CHECK(strncmp(out, ref, n) == 0);
		if (strlen(ref) < cap)
			CHECK(strcmp(out, ref) == 0);
		else
			CHECK(n == 0 || out[n - 1] != ' ');
	}
	free(out);
}

static void accepted(json_t *body)
{
	json_t *list = json_object_get(body, "questions");
	char norm[ACCT_ANSWER_NORM_CAP];
	const char *k;
	json_t *v;
	/* Only the documented members, in the body and in each item. */
	json_object_foreach(body, k, v) CHECK(strcmp(k, "questions") == 0);
	CHECK(json_is_array(list));
	CHECK(json_array_size(list) >= 1 && json_array_size(list) <= ACCT_QUESTIONS_MAX);
	for (size_t i = 0; i < json_array_size(list); i++) {
		json_t *item = json_array_get(list, i);
		const char *q = json_string_value(json_object_get(item, "question"));
		const char *a = json_string_value(json_object_get(item, "answer"));
		CHECK(q && a);
		json_object_foreach(item, k, v)
			CHECK(strcmp(k, "question") == 0 || strcmp(k, "answer") == 0);
		char *rq = reference(q);
		CHECK(rq[0] != '\0');
		free(rq);
		CHECK(chars(q) <= ACCT_QUESTION_MAX_CHARS);
		CHECK(acct_answer_normalise(a, norm, sizeof(norm)) < sizeof(norm));
		char *ra = reference(a);
		CHECK(strcmp(norm, ra) == 0);
		free(ra);
		CHECK(chars(norm) >= ACCT_ANSWER_MIN_CHARS && chars(norm) <= ACCT_ANSWER_MAX_CHARS);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *raw = malloc(size + 1);
	CHECK(raw);
	memcpy(raw, data, size);
	raw[size] = '\0';
	char *ref = reference(raw);
	for (size_t cap = 0; cap <= 8; cap++)
		check_normalise(raw, ref, cap);
	check_normalise(raw, ref, ACCT_ANSWER_NORM_CAP);
	free(ref);
	free(raw);

	mica_problem f = {0};
	json_t *body = fuzz_body(data, size);
	if (!body)
		return 0;
	int err = acct_questions_parse(body, &f);
	if (err) {
		fuzz_check_fail(err, &f);
		CHECK(strcmp(f.code, "bad_questions") == 0 || strcmp(f.code, "unknown_field") == 0);
	} else {
		CHECK(!f.code);
		accepted(body);
	}
	json_decref(body);
	return 0;
}
