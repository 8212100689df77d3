/* hsm.c - PKCS#11 access to the Key Center's HSM: loading the module and
 * logging in to the token found by label, a pool of sessions that share the
 * one login, generating the root and audit key pairs inside the token,
 * wrapping and unwrapping KEKs with the root key, AES-256-GCM and ECDSA inside
 * the token, and exporting the public keys as PEM with OpenSSL.
 */
#include "hsm.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include "crypto.h"
#include "log.h"

/* p11-kit's header, in its default compatibility mode, renames its structure
 * fields to the standard's names with object-like macros (value -> pValue,
 * count -> ulCount, aad_len -> ulAADLen, ...). Once the structures are
 * declared those macros only get in the way of ordinary identifiers, so the
 * ones that collide are dropped. Included last for the same reason. */
#include <p11-kit/pkcs11.h>
#undef value
#undef value_len
#undef count
#undef params
#undef parameter
#undef parameter_len
#undef reserved
#undef iv_len
#undef aad_len
#undef hash_alg

/* Longest PIN read from the PIN file; SoftHSM allows up to 255 bytes. */
#define PIN_MAX 255
/* Bytes of a P-256 public point: 0x04 || X || Y. */
#define P256_POINT_LEN 65
#define P256_FIELD_LEN 32
#define KEK_BYTES 32
#define KEY_ID_LEN 16

/* DER of the OID prime256v1 (1.2.840.10045.3.1.7): CKA_EC_PARAMS of P-256. */
static const uint8_t p256_params[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const uint8_t rsa_f4[] = {0x01, 0x00, 0x01};
static const CK_BBOOL yes = CK_TRUE;
static const CK_BBOOL no = CK_FALSE;

struct kc_hsm {
	void *module;
	CK_FUNCTION_LIST_PTR p11;
	bool initialized, have_slot, logged_in;
	CK_SLOT_ID slot;
	/* The session that logged in. It lives as long as the handle and owns
	 * the KEK session objects, which die with the session that created
	 * them; login_lock lets one thread at a time use it. */
	CK_SESSION_HANDLE login_session;
	pthread_mutex_t login_lock;
	/* Idle pool sessions for crypto operations, which keep per-session
	 * state between C_*Init and the final call. |cap_idle| is kept at least
	 * |n_open| so returning a session never allocates. */
	pthread_mutex_t pool_lock;
	CK_SESSION_HANDLE *idle;
	size_t n_idle, cap_idle, n_open;
};

struct kc_hsm_key {
	const kc_hsm *owner;
	CK_OBJECT_HANDLE obj;
};

static const char *ckr_name(CK_RV rv)
{
	switch (rv) {
#define CKR_CASE(x)                                                                                \
	case x:                                                                                    \
		return #x;
		CKR_CASE(CKR_OK)
		CKR_CASE(CKR_HOST_MEMORY)
		CKR_CASE(CKR_SLOT_ID_INVALID)
		CKR_CASE(CKR_GENERAL_ERROR)
		CKR_CASE(CKR_FUNCTION_FAILED)
		CKR_CASE(CKR_ARGUMENTS_BAD)
		CKR_CASE(CKR_CANT_LOCK)
		CKR_CASE(CKR_ATTRIBUTE_READ_ONLY)
		CKR_CASE(CKR_ATTRIBUTE_SENSITIVE)
		CKR_CASE(CKR_ATTRIBUTE_TYPE_INVALID)
		CKR_CASE(CKR_ATTRIBUTE_VALUE_INVALID)
		CKR_CASE(CKR_ACTION_PROHIBITED)
		CKR_CASE(CKR_DATA_INVALID)
		CKR_CASE(CKR_DATA_LEN_RANGE)
		CKR_CASE(CKR_DEVICE_ERROR)
		CKR_CASE(CKR_DEVICE_MEMORY)
		CKR_CASE(CKR_DEVICE_REMOVED)
		CKR_CASE(CKR_ENCRYPTED_DATA_INVALID)
		CKR_CASE(CKR_ENCRYPTED_DATA_LEN_RANGE)
		CKR_CASE(CKR_KEY_HANDLE_INVALID)
		CKR_CASE(CKR_KEY_SIZE_RANGE)
		CKR_CASE(CKR_KEY_TYPE_INCONSISTENT)
		CKR_CASE(CKR_KEY_FUNCTION_NOT_PERMITTED)
		CKR_CASE(CKR_KEY_UNEXTRACTABLE)
		CKR_CASE(CKR_MECHANISM_INVALID)
		CKR_CASE(CKR_MECHANISM_PARAM_INVALID)
		CKR_CASE(CKR_OBJECT_HANDLE_INVALID)
		CKR_CASE(CKR_OPERATION_ACTIVE)
		CKR_CASE(CKR_OPERATION_NOT_INITIALIZED)
		CKR_CASE(CKR_PIN_INCORRECT)
		CKR_CASE(CKR_PIN_INVALID)
		CKR_CASE(CKR_PIN_LEN_RANGE)
		CKR_CASE(CKR_PIN_EXPIRED)
		CKR_CASE(CKR_PIN_LOCKED)
		CKR_CASE(CKR_SESSION_CLOSED)
		CKR_CASE(CKR_SESSION_COUNT)
		CKR_CASE(CKR_SESSION_HANDLE_INVALID)
		CKR_CASE(CKR_SESSION_READ_ONLY)
		CKR_CASE(CKR_TEMPLATE_INCOMPLETE)
		CKR_CASE(CKR_TEMPLATE_INCONSISTENT)
		CKR_CASE(CKR_TOKEN_NOT_PRESENT)
		CKR_CASE(CKR_TOKEN_NOT_RECOGNIZED)
		CKR_CASE(CKR_TOKEN_WRITE_PROTECTED)
		CKR_CASE(CKR_UNWRAPPING_KEY_HANDLE_INVALID)
		CKR_CASE(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)
		CKR_CASE(CKR_USER_ALREADY_LOGGED_IN)
		CKR_CASE(CKR_USER_NOT_LOGGED_IN)
		CKR_CASE(CKR_USER_PIN_NOT_INITIALIZED)
		CKR_CASE(CKR_WRAPPED_KEY_INVALID)
		CKR_CASE(CKR_WRAPPED_KEY_LEN_RANGE)
		CKR_CASE(CKR_WRAPPING_KEY_HANDLE_INVALID)
		CKR_CASE(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
		CKR_CASE(CKR_BUFFER_TOO_SMALL)
		CKR_CASE(CKR_CRYPTOKI_NOT_INITIALIZED)
		CKR_CASE(CKR_CRYPTOKI_ALREADY_INITIALIZED)
#undef CKR_CASE
	default:
		return "CKR_unknown";
	}
}

/* Log a failed PKCS#11 call and map it to an error. */
static int hsm_fail(const char *call, CK_RV rv)
{
	MICA_LOG(MICA_LOG_ERROR, "hsm: %s failed: %s (0x%lx)", call, ckr_name(rv),
		 (unsigned long)rv);
	return rv == CKR_HOST_MEMORY ? MICA_ENOMEM : MICA_EHSM;
}

/* ---- Module, token, login ------------------------------------------------ */

/* Read the PIN file into |pin| (|cap| bytes) without its trailing CR/LF.
 * Returns 0 or MICA_ECONFIG; |pin| is wiped on failure. */
static int read_pin(const char *path, char *pin, size_t cap, size_t *pin_len)
{
	size_t n = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

	if (fd < 0) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: cannot open PIN file %s: %s", path, strerror(errno));
		return MICA_ECONFIG;
	}
	while (n < cap) {
		ssize_t r = read(fd, pin + n, cap - n);

		if (r == 0)
			break;
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			MICA_LOG(MICA_LOG_ERROR, "hsm: cannot read PIN file %s: %s", path,
				 strerror(errno));
			close(fd);
			mica_wipe(pin, cap);
			return MICA_ECONFIG;
		}
		n += (size_t)r;
	}
	close(fd);
	/* A full buffer means the file may be longer than any PIN. */
	if (n == cap) {
		mica_wipe(pin, cap);
		MICA_LOG(MICA_LOG_ERROR, "hsm: PIN file %s is longer than %d bytes", path, PIN_MAX);
		return MICA_ECONFIG;
	}
	while (n > 0 && (pin[n - 1] == '\n' || pin[n - 1] == '\r'))
		n--;
	if (n == 0 || n > PIN_MAX) {
		mica_wipe(pin, cap);
		MICA_LOG(MICA_LOG_ERROR, "hsm: PIN file %s holds no PIN of 1..%d bytes", path,
			 PIN_MAX);
		return MICA_ECONFIG;
	}
	*pin_len = n;
	return 0;
}

/* dlopen the module, get its function list and initialise it for use from
 * several threads with the operating system's locks. */
static int module_load(kc_hsm *h, const char *path)
{
	CK_C_GetFunctionList get_list;
	CK_C_INITIALIZE_ARGS args;
	CK_RV rv;

	h->module = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h->module) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: cannot load PKCS#11 module %s: %s", path, dlerror());
		return MICA_EHSM;
	}
	get_list = (CK_C_GetFunctionList)dlsym(h->module, "C_GetFunctionList");
	if (!get_list) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: %s is not a PKCS#11 module (no C_GetFunctionList)",
			 path);
		return MICA_EHSM;
	}
	rv = get_list(&h->p11);
	if (rv != CKR_OK || !h->p11)
		return hsm_fail("C_GetFunctionList", rv);
	memset(&args, 0, sizeof(args));
	args.flags = CKF_OS_LOCKING_OK;
	rv = h->p11->C_Initialize(&args);
	if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: module %s is already initialised in this process",
			 path);
		return MICA_ESTATE;
	}
	if (rv != CKR_OK)
		return hsm_fail("C_Initialize", rv);
	h->initialized = true;
	return 0;
}

static size_t trimmed_len(const unsigned char *s, size_t n)
{
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\0'))
		n--;
	return n;
}

/* Find the one slot whose token is labelled |label|. Token labels are 32
 * bytes padded with spaces; slot numbers change as tokens come and go, so
 * only the label identifies the token. */
static int find_slot(kc_hsm *h, const char *label)
{
	size_t want = trimmed_len((const unsigned char *)label, strlen(label));
	CK_SLOT_ID *slots = NULL;
	CK_ULONG n = 0;
	unsigned matches = 0;
	CK_RV rv;
	int rc = 0;

	/* The slot list can grow between the two calls; ask again then. */
	for (;;) {
		rv = h->p11->C_GetSlotList(CK_TRUE, NULL, &n);
		if (rv != CKR_OK) {
			rc = hsm_fail("C_GetSlotList", rv);
			goto out;
		}
		free(slots);
		slots = calloc(n ? n : 1, sizeof(*slots));
		if (!slots) {
			rc = MICA_ENOMEM;
			goto out;
		}
		rv = h->p11->C_GetSlotList(CK_TRUE, slots, &n);
		if (rv == CKR_BUFFER_TOO_SMALL)
			continue;
		if (rv != CKR_OK) {
			rc = hsm_fail("C_GetSlotList", rv);
			goto out;
		}
		break;
	}
	for (CK_ULONG i = 0; i < n; i++) {
		CK_TOKEN_INFO info;

		/* A token removed meanwhile is simply not a match. */
		if (h->p11->C_GetTokenInfo(slots[i], &info) != CKR_OK)
			continue;
		if (trimmed_len(info.label, sizeof(info.label)) == want &&
		    memcmp(info.label, label, want) == 0) {
			matches++;
			h->slot = slots[i];
		}
	}
	if (matches == 0) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: no token labelled \"%s\" (%lu slots with a token)",
			 label, (unsigned long)n);
		rc = MICA_EHSM;
	} else if (matches > 1) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: %u tokens are labelled \"%s\"; refusing to guess",
			 matches, label);
		rc = MICA_EHSM;
	} else {
		h->have_slot = true;
	}
out:
	free(slots);
	return rc;
}

static int login(kc_hsm *h, const char *label, const char *pin, size_t pin_len)
{
	CK_RV rv = h->p11->C_Login(h->login_session, CKU_USER, (CK_UTF8CHAR_PTR)pin, pin_len);

	switch (rv) {
	case CKR_OK:
		h->logged_in = true;
		return 0;
	case CKR_PIN_INCORRECT:
	case CKR_PIN_LEN_RANGE:
	case CKR_PIN_INVALID:
	case CKR_PIN_EXPIRED:
	case CKR_PIN_LOCKED:
	case CKR_USER_PIN_NOT_INITIALIZED:
		MICA_LOG(MICA_LOG_ERROR, "hsm: token \"%s\" refused the user PIN: %s", label,
			 ckr_name(rv));
		return MICA_EPIN;
	default:
		return hsm_fail("C_Login", rv);
	}
}

int kc_hsm_open_pin(kc_hsm **out, const char *module_path, const char *token_label, const char *pin,
		    size_t pin_len)
{
	kc_hsm *h = NULL;
	size_t label_len;
	CK_RV rv;
	int rc;

	if (!out)
		return MICA_EINVAL;
	*out = NULL;
	if (!module_path || !token_label || !pin)
		return MICA_EINVAL;
	label_len = strlen(token_label);
	if (label_len == 0 || label_len > 32) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: token label must be 1..32 bytes, not %zu",
			 label_len);
		return MICA_ECONFIG;
	}
	if (pin_len == 0 || pin_len > PIN_MAX)
		return MICA_ECONFIG;
	h = calloc(1, sizeof(*h));
	if (!h)
		return MICA_ENOMEM;
	pthread_mutex_init(&h->login_lock, NULL);
	pthread_mutex_init(&h->pool_lock, NULL);
	rc = module_load(h, module_path);
	if (rc)
		goto out;
	rc = find_slot(h, token_label);
	if (rc)
		goto out;
	rv = h->p11->C_OpenSession(h->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
				   &h->login_session);
	if (rv != CKR_OK) {
		rc = hsm_fail("C_OpenSession", rv);
		goto out;
	}
	rc = login(h, token_label, pin, pin_len);
	if (rc)
		goto out;
	MICA_LOG(MICA_LOG_INFO, "hsm: logged in to token \"%s\" (module %s)", token_label,
		 module_path);
out:
	if (rc)
		kc_hsm_close(h);
	else
		*out = h;
	return rc;
}

int kc_hsm_open(kc_hsm **out, const char *module_path, const char *token_label,
		const char *pin_file)
{
	/* Room for the longest PIN plus CR LF, and one byte to detect more. */
	char pin[PIN_MAX + 3];
	size_t pin_len = 0;
	int rc;

	if (!out)
		return MICA_EINVAL;
	*out = NULL;
	if (!module_path || !token_label || !pin_file)
		return MICA_EINVAL;
	if (strlen(token_label) == 0 || strlen(token_label) > 32) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: token label must be 1..32 bytes, not %zu",
			 strlen(token_label));
		return MICA_ECONFIG;
	}
	rc = read_pin(pin_file, pin, sizeof(pin), &pin_len);
	if (rc)
		return rc;
	rc = kc_hsm_open_pin(out, module_path, token_label, pin, pin_len);
	mica_wipe(pin, sizeof(pin));
	return rc;
}

/* C_SetPIN on |s| from |old| to |new_pin|, naming |who| in the log. */
static int set_pin(kc_hsm *h, CK_SESSION_HANDLE s, const char *who, const char *old, size_t old_len,
		   const char *new_pin, size_t new_len)
{
	CK_RV rv = h->p11->C_SetPIN(s, (CK_UTF8CHAR_PTR)old, old_len, (CK_UTF8CHAR_PTR)new_pin,
				    new_len);
	if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_INVALID ||
	    rv == CKR_PIN_LOCKED) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: the token refused to change the %s PIN: %s", who,
			 ckr_name(rv));
		return MICA_EPIN;
	}
	if (rv != CKR_OK)
		return hsm_fail("C_SetPIN", rv);
	return 0;
}

int kc_hsm_change_pins(kc_hsm *h, const char *old_user, size_t old_user_len, const char *new_user,
		       size_t new_user_len, const char *old_so, size_t old_so_len,
		       const char *new_so, size_t new_so_len, bool *user_changed)
{
	CK_RV rv;
	int rc;

	if (user_changed)
		*user_changed = false;
	if (!h || !old_user || !new_user || !h->logged_in)
		return MICA_EINVAL;
	if (!new_user_len || new_user_len > PIN_MAX ||
	    (old_so && (!new_so || !new_so_len || new_so_len > PIN_MAX)))
		return MICA_EINVAL;
	pthread_mutex_lock(&h->login_lock);
	rc = set_pin(h, h->login_session, "user", old_user, old_user_len, new_user, new_user_len);
	if (rc == 0 && user_changed)
		*user_changed = true;
	if (rc || !old_so)
		goto out;
	/* The SO logs in on the same application: the user logs out first,
	 * and back in with the new PIN afterwards, so |h| stays usable. */
	rv = h->p11->C_Logout(h->login_session);
	if (rv != CKR_OK) {
		rc = hsm_fail("C_Logout", rv);
		goto out;
	}
	h->logged_in = false;
	rv = h->p11->C_Login(h->login_session, CKU_SO, (CK_UTF8CHAR_PTR)old_so, old_so_len);
	if (rv != CKR_OK) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: the token refused the SO PIN: %s", ckr_name(rv));
		rc = rv == CKR_PIN_INCORRECT ? MICA_EPIN : hsm_fail("C_Login(SO)", rv);
	} else {
		rc = set_pin(h, h->login_session, "SO", old_so, old_so_len, new_so, new_so_len);
		(void)h->p11->C_Logout(h->login_session);
	}
	rv = h->p11->C_Login(h->login_session, CKU_USER, (CK_UTF8CHAR_PTR)new_user, new_user_len);
	if (rv == CKR_OK)
		h->logged_in = true;
	else if (!rc)
		rc = hsm_fail("C_Login", rv);
out:
	pthread_mutex_unlock(&h->login_lock);
	return rc;
}

void kc_hsm_close(kc_hsm *h)
{
	CK_RV rv;

	if (!h)
		return;
	if (h->logged_in) {
		rv = h->p11->C_Logout(h->login_session);
		if (rv != CKR_OK)
			(void)hsm_fail("C_Logout", rv);
	}
	if (h->have_slot)
		(void)h->p11->C_CloseAllSessions(h->slot);
	if (h->initialized) {
		rv = h->p11->C_Finalize(NULL);
		if (rv != CKR_OK)
			(void)hsm_fail("C_Finalize", rv);
	}
	if (h->module)
		dlclose(h->module);
	free(h->idle);
	pthread_mutex_destroy(&h->pool_lock);
	pthread_mutex_destroy(&h->login_lock);
	free(h);
}

/* ---- Session pool -------------------------------------------------------- */

/* Borrow a session for one operation: an idle one, or a new one. Every
 * session of the application shares the login of |login_session|, so a new
 * session needs no PIN. Returns 0, MICA_ENOMEM or MICA_EHSM. */
static int session_get(kc_hsm *h, CK_SESSION_HANDLE *s)
{
	CK_RV rv;

	pthread_mutex_lock(&h->pool_lock);
	if (h->n_idle > 0) {
		*s = h->idle[--h->n_idle];
		pthread_mutex_unlock(&h->pool_lock);
		return 0;
	}
	if (h->cap_idle < h->n_open + 1) {
		size_t cap = h->cap_idle ? 2 * h->cap_idle : 8;
		CK_SESSION_HANDLE *idle = realloc(h->idle, cap * sizeof(*idle));

		if (!idle) {
			pthread_mutex_unlock(&h->pool_lock);
			return MICA_ENOMEM;
		}
		h->idle = idle;
		h->cap_idle = cap;
	}
	h->n_open++;
	pthread_mutex_unlock(&h->pool_lock);

	rv = h->p11->C_OpenSession(h->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s);
	if (rv != CKR_OK) {
		pthread_mutex_lock(&h->pool_lock);
		h->n_open--;
		pthread_mutex_unlock(&h->pool_lock);
		return hsm_fail("C_OpenSession", rv);
	}
	return 0;
}

/* Return a borrowed session. |reuse| false closes it instead: after an
 * unexpected failure the module may have left an operation active in it. */
static void session_put(kc_hsm *h, CK_SESSION_HANDLE s, bool reuse)
{
	if (!reuse)
		(void)h->p11->C_CloseSession(s);
	pthread_mutex_lock(&h->pool_lock);
	if (reuse)
		h->idle[h->n_idle++] = s;
	else
		h->n_open--;
	pthread_mutex_unlock(&h->pool_lock);
}

/* ---- Objects and attributes ---------------------------------------------- */

/* The handles of up to |cap| objects matching |tmpl|; *n gets how many. */
static int find_objects(kc_hsm *h, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG tmpl_len,
			CK_OBJECT_HANDLE *found, CK_ULONG cap, CK_ULONG *n)
{
	CK_RV rv, rv_final;

	*n = 0;
	rv = h->p11->C_FindObjectsInit(s, tmpl, tmpl_len);
	if (rv != CKR_OK)
		return hsm_fail("C_FindObjectsInit", rv);
	rv = h->p11->C_FindObjects(s, found, cap, n);
	/* Always end the search, or the session stays busy with it. */
	rv_final = h->p11->C_FindObjectsFinal(s);
	if (rv != CKR_OK)
		return hsm_fail("C_FindObjects", rv);
	if (rv_final != CKR_OK)
		return hsm_fail("C_FindObjectsFinal", rv_final);
	return 0;
}

/* The single object of class |cls| labelled |label|. Returns 0,
 * MICA_ENOTFOUND, or MICA_EHSM (lookup failed, or the label is ambiguous). */
static int find_key(kc_hsm *h, CK_SESSION_HANDLE s, const char *label, CK_OBJECT_CLASS cls,
		    CK_OBJECT_HANDLE *obj)
{
	CK_ATTRIBUTE tmpl[] = {
		{CKA_CLASS, &cls, sizeof(cls)},
		{CKA_LABEL, (void *)label, strlen(label)},
	};
	CK_OBJECT_HANDLE found[2];
	CK_ULONG n;
	int rc = find_objects(h, s, tmpl, 2, found, 2, &n);

	if (rc)
		return rc;
	if (n == 0)
		return MICA_ENOTFOUND;
	if (n > 1) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: several keys of class %lu are labelled \"%s\"",
			 (unsigned long)cls, label);
		return MICA_EHSM;
	}
	*obj = found[0];
	return 0;
}

/* Destroy every object labelled |label|, of any class. */
static int destroy_labelled(kc_hsm *h, CK_SESSION_HANDLE s, const char *label)
{
	CK_ATTRIBUTE tmpl[] = {{CKA_LABEL, (void *)label, strlen(label)}};
	CK_OBJECT_HANDLE found[16];
	CK_ULONG n;

	/* Search again after each batch: handles found by one search are
	 * destroyed before the next starts. */
	do {
		int rc = find_objects(h, s, tmpl, 1, found, 16, &n);
		if (rc)
			return rc;
		for (CK_ULONG i = 0; i < n; i++) {
			CK_RV rv = h->p11->C_DestroyObject(s, found[i]);

			if (rv != CKR_OK)
				return hsm_fail("C_DestroyObject", rv);
		}
	} while (n > 0);
	MICA_LOG(MICA_LOG_WARN, "hsm: destroyed the existing objects labelled \"%s\"", label);
	return 0;
}

static int label_in_use(kc_hsm *h, CK_SESSION_HANDLE s, const char *label, bool *used)
{
	CK_ATTRIBUTE tmpl[] = {{CKA_LABEL, (void *)label, strlen(label)}};
	CK_OBJECT_HANDLE found;
	CK_ULONG n;
	int rc = find_objects(h, s, tmpl, 1, &found, 1, &n);

	*used = n > 0;
	return rc;
}

static int get_bool(kc_hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type,
		    bool *out)
{
	CK_BBOOL v = CK_FALSE;
	CK_ATTRIBUTE a = {type, &v, sizeof(v)};
	CK_RV rv = h->p11->C_GetAttributeValue(s, obj, &a, 1);

	*out = false;
	if (rv != CKR_OK)
		return hsm_fail("C_GetAttributeValue", rv);
	*out = v == CK_TRUE;
	return 0;
}

static int get_ulong(kc_hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type,
		     CK_ULONG *out)
{
	CK_ATTRIBUTE a = {type, out, sizeof(*out)};
	CK_RV rv = h->p11->C_GetAttributeValue(s, obj, &a, 1);

	if (rv != CKR_OK)
		return hsm_fail("C_GetAttributeValue", rv);
	return 0;
}

/* A variable-length public attribute into a malloc'd buffer. */
static int get_bytes(kc_hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type,
		     uint8_t **out, size_t *out_len)
{
	CK_ATTRIBUTE a = {type, NULL, 0};
	CK_RV rv = h->p11->C_GetAttributeValue(s, obj, &a, 1);

	*out = NULL;
	*out_len = 0;
	if (rv != CKR_OK)
		return hsm_fail("C_GetAttributeValue", rv);
	if (a.ulValueLen == 0 || a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: attribute 0x%lx is empty", (unsigned long)type);
		return MICA_EHSM;
	}
	a.pValue = malloc(a.ulValueLen);
	if (!a.pValue)
		return MICA_ENOMEM;
	rv = h->p11->C_GetAttributeValue(s, obj, &a, 1);
	if (rv != CKR_OK) {
		free(a.pValue);
		return hsm_fail("C_GetAttributeValue", rv);
	}
	*out = a.pValue;
	*out_len = a.ulValueLen;
	return 0;
}

/* ---- The KEK template ------------------------------------------------------ */

/* What an unwrapped KEK is: an AES session object, sensitive, never
 * extractable, usable only to encrypt and decrypt. The root private key
 * carries exactly these attributes as its CKA_UNWRAP_TEMPLATE, so the token
 * refuses any C_UnwrapKey with the root key whose template leaves one of them
 * out or sets it otherwise (SoftHSM 2.6.1 answers CKR_TEMPLATE_INCONSISTENT
 * in both cases; docs/decisions.md has the probe). A PIN holder can still
 * use a KEK inside the token, but cannot take it out. */
static const CK_OBJECT_CLASS kek_class = CKO_SECRET_KEY;
static const CK_KEY_TYPE kek_type = CKK_AES;
/* One attribute per line (clang-format would re-flow the macro). */
/* clang-format off */
#define KEK_TEMPLATE_ATTRS                                                                         \
	{CKA_CLASS, (void *)&kek_class, sizeof(kek_class)},                                        \
	{CKA_KEY_TYPE, (void *)&kek_type, sizeof(kek_type)},                                       \
	{CKA_TOKEN, (void *)&no, sizeof(no)},                                                      \
	{CKA_SENSITIVE, (void *)&yes, sizeof(yes)},                                                \
	{CKA_EXTRACTABLE, (void *)&no, sizeof(no)},                                                \
	{CKA_ENCRYPT, (void *)&yes, sizeof(yes)},                                                  \
	{CKA_DECRYPT, (void *)&yes, sizeof(yes)},                                                  \
	{CKA_WRAP, (void *)&no, sizeof(no)},                                                       \
	{CKA_UNWRAP, (void *)&no, sizeof(no)},                                                     \
	{CKA_SIGN, (void *)&no, sizeof(no)},                                                       \
	{CKA_VERIFY, (void *)&no, sizeof(no)},                                                     \
	{CKA_DERIVE, (void *)&no, sizeof(no)}
/* clang-format on */
static CK_ATTRIBUTE kek_unwrap_template[] = {KEK_TEMPLATE_ATTRS};

/* A session key that exists only to be wrapped (wrap_fresh, migrate_from):
 * extractable, since C_WrapKey needs it, but sensitive and usable for
 * nothing. */
/* clang-format off */
#define WRAPPABLE_KEY_ATTRS                                                                        \
	{CKA_TOKEN, (void *)&no, sizeof(no)},                                                      \
	{CKA_PRIVATE, (void *)&yes, sizeof(yes)},                                                  \
	{CKA_SENSITIVE, (void *)&yes, sizeof(yes)},                                                \
	{CKA_EXTRACTABLE, (void *)&yes, sizeof(yes)},                                              \
	{CKA_ENCRYPT, (void *)&no, sizeof(no)},                                                    \
	{CKA_DECRYPT, (void *)&no, sizeof(no)},                                                    \
	{CKA_WRAP, (void *)&no, sizeof(no)},                                                       \
	{CKA_UNWRAP, (void *)&no, sizeof(no)},                                                     \
	{CKA_SIGN, (void *)&no, sizeof(no)},                                                       \
	{CKA_VERIFY, (void *)&no, sizeof(no)},                                                     \
	{CKA_DERIVE, (void *)&no, sizeof(no)}
/* clang-format on */

/* ---- Key generation ------------------------------------------------------ */

static int generate_pair(kc_hsm *h, CK_SESSION_HANDLE s, CK_MECHANISM_TYPE type, CK_ATTRIBUTE *pub,
			 CK_ULONG pub_len, CK_ATTRIBUTE *priv, CK_ULONG priv_len,
			 CK_OBJECT_HANDLE *pub_obj, CK_OBJECT_HANDLE *priv_obj)
{
	CK_MECHANISM mech = {type, NULL, 0};
	CK_RV rv = h->p11->C_GenerateKeyPair(s, &mech, pub, pub_len, priv, priv_len, pub_obj,
					     priv_obj);

	if (rv != CKR_OK)
		return hsm_fail("C_GenerateKeyPair", rv);
	return 0;
}

/* The root key: RSA-4096, its private half able only to unwrap KEKs (and
 * only as kek_unwrap_template says) and its public half only to wrap them. Every usage flag is set
 * explicitly rather than left to the module's defaults, and neither half can be modified. */
static int generate_root(kc_hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *pub_obj,
			 CK_OBJECT_HANDLE *priv_obj)
{
	CK_OBJECT_CLASS pub_class = CKO_PUBLIC_KEY, priv_class = CKO_PRIVATE_KEY;
	CK_KEY_TYPE type = CKK_RSA;
	CK_ULONG bits = KC_HSM_ROOT_BITS;
	uint8_t id[KEY_ID_LEN];
	char *label = KC_HSM_ROOT_LABEL;

	if (mica_random(id, sizeof(id)) != 0)
		return MICA_ECRYPTO;
	CK_ATTRIBUTE pub[] = {
		{CKA_CLASS, &pub_class, sizeof(pub_class)},
		{CKA_KEY_TYPE, &type, sizeof(type)},
		{CKA_TOKEN, (void *)&yes, sizeof(yes)},
		{CKA_PRIVATE, (void *)&no, sizeof(no)},
		{CKA_MODIFIABLE, (void *)&no, sizeof(no)},
		{CKA_LABEL, label, strlen(label)},
		{CKA_ID, id, sizeof(id)},
		{CKA_MODULUS_BITS, &bits, sizeof(bits)},
		{CKA_PUBLIC_EXPONENT, (void *)rsa_f4, sizeof(rsa_f4)},
		{CKA_WRAP, (void *)&yes, sizeof(yes)},
		{CKA_ENCRYPT, (void *)&no, sizeof(no)},
		{CKA_VERIFY, (void *)&no, sizeof(no)},
		{CKA_VERIFY_RECOVER, (void *)&no, sizeof(no)},
		{CKA_DERIVE, (void *)&no, sizeof(no)},
	};
	CK_ATTRIBUTE priv[] = {
		{CKA_CLASS, &priv_class, sizeof(priv_class)},
		{CKA_KEY_TYPE, &type, sizeof(type)},
		{CKA_TOKEN, (void *)&yes, sizeof(yes)},
		{CKA_PRIVATE, (void *)&yes, sizeof(yes)},
		{CKA_MODIFIABLE, (void *)&no, sizeof(no)},
		{CKA_LABEL, label, strlen(label)},
		{CKA_ID, id, sizeof(id)},
		{CKA_SENSITIVE, (void *)&yes, sizeof(yes)},
		{CKA_EXTRACTABLE, (void *)&no, sizeof(no)},
		{CKA_UNWRAP, (void *)&yes, sizeof(yes)},
		{CKA_UNWRAP_TEMPLATE, kek_unwrap_template, sizeof(kek_unwrap_template)},
		/* A copy could not change the template either (SoftHSM answers
		 * CKR_ATTRIBUTE_READ_ONLY), but there is no reason to allow one. */
		{CKA_COPYABLE, (void *)&no, sizeof(no)},
		{CKA_DECRYPT, (void *)&no, sizeof(no)},
		{CKA_SIGN, (void *)&no, sizeof(no)},
		{CKA_SIGN_RECOVER, (void *)&no, sizeof(no)},
		{CKA_DERIVE, (void *)&no, sizeof(no)},
	};
	return generate_pair(h, s, CKM_RSA_PKCS_KEY_PAIR_GEN, pub, sizeof(pub) / sizeof(pub[0]),
			     priv, sizeof(priv) / sizeof(priv[0]), pub_obj, priv_obj);
}

/* The audit checkpoint key: EC P-256, private half able only to sign, public
 * half only to verify. */
static int generate_audit(kc_hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *pub_obj,
			  CK_OBJECT_HANDLE *priv_obj)
{
	CK_OBJECT_CLASS pub_class = CKO_PUBLIC_KEY, priv_class = CKO_PRIVATE_KEY;
	CK_KEY_TYPE type = CKK_EC;
	uint8_t id[KEY_ID_LEN];
	char *label = KC_HSM_AUDIT_LABEL;

	if (mica_random(id, sizeof(id)) != 0)
		return MICA_ECRYPTO;
	CK_ATTRIBUTE pub[] = {
		{CKA_CLASS, &pub_class, sizeof(pub_class)},
		{CKA_KEY_TYPE, &type, sizeof(type)},
		{CKA_TOKEN, (void *)&yes, sizeof(yes)},
		{CKA_PRIVATE, (void *)&no, sizeof(no)},
		{CKA_MODIFIABLE, (void *)&no, sizeof(no)},
		{CKA_LABEL, label, strlen(label)},
		{CKA_ID, id, sizeof(id)},
		{CKA_EC_PARAMS, (void *)p256_params, sizeof(p256_params)},
		{CKA_VERIFY, (void *)&yes, sizeof(yes)},
		{CKA_VERIFY_RECOVER, (void *)&no, sizeof(no)},
		{CKA_ENCRYPT, (void *)&no, sizeof(no)},
		{CKA_WRAP, (void *)&no, sizeof(no)},
		{CKA_DERIVE, (void *)&no, sizeof(no)},
	};
	CK_ATTRIBUTE priv[] = {
		{CKA_CLASS, &priv_class, sizeof(priv_class)},
		{CKA_KEY_TYPE, &type, sizeof(type)},
		{CKA_TOKEN, (void *)&yes, sizeof(yes)},
		{CKA_PRIVATE, (void *)&yes, sizeof(yes)},
		{CKA_MODIFIABLE, (void *)&no, sizeof(no)},
		{CKA_LABEL, label, strlen(label)},
		{CKA_ID, id, sizeof(id)},
		{CKA_SENSITIVE, (void *)&yes, sizeof(yes)},
		{CKA_EXTRACTABLE, (void *)&no, sizeof(no)},
		{CKA_SIGN, (void *)&yes, sizeof(yes)},
		{CKA_SIGN_RECOVER, (void *)&no, sizeof(no)},
		{CKA_DECRYPT, (void *)&no, sizeof(no)},
		{CKA_UNWRAP, (void *)&no, sizeof(no)},
		{CKA_DERIVE, (void *)&no, sizeof(no)},
	};
	return generate_pair(h, s, CKM_EC_KEY_PAIR_GEN, pub, sizeof(pub) / sizeof(pub[0]), priv,
			     sizeof(priv) / sizeof(priv[0]), pub_obj, priv_obj);
}

int kc_hsm_init_keys(kc_hsm *h, int force)
{
	static const char *const labels[] = {KC_HSM_ROOT_LABEL, KC_HSM_AUDIT_LABEL};
	CK_OBJECT_HANDLE root_pub = 0, root_priv = 0, audit_pub = 0, audit_priv = 0;
	CK_SESSION_HANDLE s;
	bool root_made = false;
	int rc;

	if (!h)
		return MICA_EINVAL;
	rc = session_get(h, &s);
	if (rc)
		return rc;
	/* Check both labels before touching anything, so MICA_EEXISTS leaves
	 * the token exactly as it was. */
	for (size_t i = 0; i < 2; i++) {
		bool used;

		rc = label_in_use(h, s, labels[i], &used);
		if (rc)
			goto out;
		if (used && !force) {
			MICA_LOG(MICA_LOG_ERROR,
				 "hsm: the token already holds \"%s\"; not reinitialising without "
				 "force",
				 labels[i]);
			rc = MICA_EEXISTS;
			goto out;
		}
	}
	for (size_t i = 0; force && i < 2; i++) {
		rc = destroy_labelled(h, s, labels[i]);
		if (rc)
			goto out;
	}
	rc = generate_root(h, s, &root_pub, &root_priv);
	if (rc)
		goto out;
	root_made = true;
	rc = generate_audit(h, s, &audit_pub, &audit_priv);
	if (rc)
		goto out;
	MICA_LOG(MICA_LOG_INFO, "hsm: generated \"%s\" (RSA-%d) and \"%s\" (EC P-256)",
		 KC_HSM_ROOT_LABEL, KC_HSM_ROOT_BITS, KC_HSM_AUDIT_LABEL);
out:
	if (rc && root_made) {
		(void)h->p11->C_DestroyObject(s, root_priv);
		(void)h->p11->C_DestroyObject(s, root_pub);
	}
	session_put(h, s, true);
	return rc;
}

/* ---- Public keys --------------------------------------------------------- */

static int pkey_from_params(const char *type, OSSL_PARAM_BLD *bld, EVP_PKEY **pkey)
{
	OSSL_PARAM *ossl_params = OSSL_PARAM_BLD_to_param(bld);
	EVP_PKEY_CTX *ctx = NULL;
	int rc = MICA_ECRYPTO;

	if (!ossl_params)
		goto out;
	ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
	if (!ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
	    EVP_PKEY_fromdata(ctx, pkey, EVP_PKEY_PUBLIC_KEY, ossl_params) != 1)
		goto out;
	rc = 0;
out:
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(ossl_params);
	return rc;
}

static int rsa_public(kc_hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, EVP_PKEY **pkey)
{
	uint8_t *mod = NULL, *exp = NULL;
	size_t mod_len, exp_len;
	BIGNUM *n = NULL, *e = NULL;
	OSSL_PARAM_BLD *bld = NULL;
	int rc;

	rc = get_bytes(h, s, obj, CKA_MODULUS, &mod, &mod_len);
	if (rc)
		goto out;
	rc = get_bytes(h, s, obj, CKA_PUBLIC_EXPONENT, &exp, &exp_len);
	if (rc)
		goto out;
	rc = MICA_ECRYPTO;
	n = BN_bin2bn(mod, (int)mod_len, NULL);
	e = BN_bin2bn(exp, (int)exp_len, NULL);
	bld = OSSL_PARAM_BLD_new();
	if (!n || !e || !bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
		goto out;
	rc = pkey_from_params("RSA", bld, pkey);
out:
	OSSL_PARAM_BLD_free(bld);
	BN_free(e);
	BN_free(n);
	free(exp);
	free(mod);
	return rc;
}

/* The uncompressed point inside CKA_EC_POINT. PKCS#11 says the attribute is
 * the DER of an OCTET STRING around the point, which SoftHSM follows; some
 * modules return the bare point, which is accepted too. */
static const uint8_t *ec_point_bytes(const uint8_t *attr, size_t len)
{
	if (len == P256_POINT_LEN + 2 && attr[0] == 0x04 && attr[1] == P256_POINT_LEN &&
	    attr[2] == 0x04)
		return attr + 2;
	if (len == P256_POINT_LEN && attr[0] == 0x04)
		return attr;
	return NULL;
}

static int ec_public(kc_hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, EVP_PKEY **pkey)
{
	uint8_t *ec_params = NULL, *point_attr = NULL;
	size_t ec_params_len, point_attr_len;
	const uint8_t *point;
	OSSL_PARAM_BLD *bld = NULL;
	int rc;

	rc = get_bytes(h, s, obj, CKA_EC_PARAMS, &ec_params, &ec_params_len);
	if (rc)
		goto out;
	if (ec_params_len != sizeof(p256_params) ||
	    memcmp(ec_params, p256_params, sizeof(p256_params)) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: EC key is not on P-256");
		rc = MICA_EINVAL;
		goto out;
	}
	rc = get_bytes(h, s, obj, CKA_EC_POINT, &point_attr, &point_attr_len);
	if (rc)
		goto out;
	point = ec_point_bytes(point_attr, point_attr_len);
	if (!point) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: malformed CKA_EC_POINT (%zu bytes)", point_attr_len);
		rc = MICA_EHSM;
		goto out;
	}
	rc = MICA_ECRYPTO;
	bld = OSSL_PARAM_BLD_new();
	if (!bld ||
	    !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, SN_X9_62_prime256v1,
					     0) ||
	    !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, P256_POINT_LEN))
		goto out;
	rc = pkey_from_params("EC", bld, pkey);
out:
	OSSL_PARAM_BLD_free(bld);
	free(point_attr);
	free(ec_params);
	return rc;
}

static int pem_from_pkey(EVP_PKEY *pkey, char **pem)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data;
	long len;
	int rc = MICA_ECRYPTO;

	if (!bio || PEM_write_bio_PUBKEY(bio, pkey) != 1)
		goto out;
	len = BIO_get_mem_data(bio, &data);
	if (len <= 0)
		goto out;
	*pem = malloc((size_t)len + 1);
	if (!*pem) {
		rc = MICA_ENOMEM;
		goto out;
	}
	memcpy(*pem, data, (size_t)len);
	(*pem)[len] = '\0';
	rc = 0;
out:
	BIO_free(bio);
	return rc;
}

int kc_hsm_public_pem(kc_hsm *h, const char *label, char **pem)
{
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE obj;
	CK_ULONG type;
	EVP_PKEY *pkey = NULL;
	int rc;

	if (pem)
		*pem = NULL;
	if (!h || !label || !pem)
		return MICA_EINVAL;
	rc = session_get(h, &s);
	if (rc)
		return rc;
	rc = find_key(h, s, label, CKO_PUBLIC_KEY, &obj);
	if (rc)
		goto out;
	rc = get_ulong(h, s, obj, CKA_KEY_TYPE, &type);
	if (rc)
		goto out;
	if (type == CKK_RSA) {
		rc = rsa_public(h, s, obj, &pkey);
	} else if (type == CKK_EC) {
		rc = ec_public(h, s, obj, &pkey);
	} else {
		MICA_LOG(MICA_LOG_ERROR, "hsm: \"%s\" has key type 0x%lx, not RSA or EC", label,
			 (unsigned long)type);
		rc = MICA_EINVAL;
	}
	if (rc)
		goto out;
	rc = pem_from_pkey(pkey, pem);
out:
	EVP_PKEY_free(pkey);
	session_put(h, s, true);
	return rc;
}

/* ---- Key information ----------------------------------------------------- */

struct bool_attr {
	CK_ATTRIBUTE_TYPE type;
	bool *out;
};

static int get_bools(kc_hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
		     const struct bool_attr *attrs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int rc = get_bool(h, s, obj, attrs[i].type, attrs[i].out);

		if (rc)
			return rc;
	}
	return 0;
}

/* Modulus bits of an RSA public key, or 256 for a P-256 one. */
static int key_bits(kc_hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, bool is_rsa,
		    unsigned *bits)
{
	uint8_t *mod = NULL;
	size_t len, i = 0;
	int rc;

	if (!is_rsa) {
		EVP_PKEY *pkey = NULL;

		rc = ec_public(h, s, pub, &pkey);
		EVP_PKEY_free(pkey);
		*bits = rc ? 0 : 8 * P256_FIELD_LEN;
		return rc;
	}
	rc = get_bytes(h, s, pub, CKA_MODULUS, &mod, &len);
	if (rc)
		return rc;
	while (i < len && mod[i] == 0)
		i++;
	*bits = 0;
	if (i < len) {
		unsigned top = mod[i], top_bits = 0;

		while (top) {
			top_bits++;
			top >>= 1;
		}
		*bits = (unsigned)(8 * (len - i - 1)) + top_bits;
	}
	free(mod);
	return 0;
}

int kc_hsm_key_info(kc_hsm *h, const char *label, struct kc_hsm_key_info *info)
{
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE pub, priv;
	CK_ULONG type;
	int rc;

	if (!h || !label || !info)
		return MICA_EINVAL;
	memset(info, 0, sizeof(*info));
	rc = session_get(h, &s);
	if (rc)
		return rc;
	rc = find_key(h, s, label, CKO_PRIVATE_KEY, &priv);
	if (rc)
		goto out;
	rc = find_key(h, s, label, CKO_PUBLIC_KEY, &pub);
	if (rc)
		goto out;
	rc = get_ulong(h, s, pub, CKA_KEY_TYPE, &type);
	if (rc)
		goto out;
	info->is_rsa = type == CKK_RSA;
	rc = key_bits(h, s, pub, info->is_rsa, &info->bits);
	if (rc)
		goto out;
	const struct bool_attr priv_attrs[] = {
		{CKA_TOKEN, &info->priv.token},
		{CKA_PRIVATE, &info->priv.is_private},
		{CKA_MODIFIABLE, &info->priv.modifiable},
		{CKA_SENSITIVE, &info->priv.sensitive},
		{CKA_ALWAYS_SENSITIVE, &info->priv.always_sensitive},
		{CKA_EXTRACTABLE, &info->priv.extractable},
		{CKA_NEVER_EXTRACTABLE, &info->priv.never_extractable},
		{CKA_LOCAL, &info->priv.local},
		{CKA_DECRYPT, &info->priv.decrypt},
		{CKA_SIGN, &info->priv.sign},
		{CKA_SIGN_RECOVER, &info->priv.sign_recover},
		{CKA_UNWRAP, &info->priv.unwrap},
		{CKA_DERIVE, &info->priv.derive},
	};
	const struct bool_attr pub_attrs[] = {
		{CKA_TOKEN, &info->pub.token},
		{CKA_MODIFIABLE, &info->pub.modifiable},
		{CKA_ENCRYPT, &info->pub.encrypt},
		{CKA_VERIFY, &info->pub.verify},
		{CKA_VERIFY_RECOVER, &info->pub.verify_recover},
		{CKA_WRAP, &info->pub.wrap},
		{CKA_DERIVE, &info->pub.derive},
	};
	rc = get_bools(h, s, priv, priv_attrs, sizeof(priv_attrs) / sizeof(priv_attrs[0]));
	if (rc)
		goto out;
	rc = get_bools(h, s, pub, pub_attrs, sizeof(pub_attrs) / sizeof(pub_attrs[0]));
out:
	session_put(h, s, true);
	return rc;
}

/* ---- Key-encryption keys ------------------------------------------------- */

/* RSA-OAEP parameters for wrapping KEKs. SoftHSM 2.6.1 implements OAEP only
 * with SHA-1 and MGF1-SHA-1 (it rejects any other hashAlg/mgf with
 * CKR_ARGUMENTS_BAD), so that is what the root key uses. OAEP's security
 * rests on the hash's random-oracle behaviour, not its collision
 * resistance, so SHA-1 here is sound; docs/decisions.md records it. */
static void oaep_mechanism(CK_RSA_PKCS_OAEP_PARAMS *oaep, CK_MECHANISM *mech)
{
	oaep->hashAlg = CKM_SHA_1;
	oaep->mgf = CKG_MGF1_SHA1;
	oaep->source = CKZ_DATA_SPECIFIED;
	oaep->pSourceData = NULL;
	oaep->ulSourceDataLen = 0;
	mech->mechanism = CKM_RSA_PKCS_OAEP;
	mech->pParameter = oaep;
	mech->ulParameterLen = sizeof(*oaep);
}

/* Generate a fresh AES-256 session key that exists only to be wrapped
 * (extractable, else C_WrapKey refuses, but sensitive and usable for
 * nothing) and wrap it with the RSA public key |pub| into |blob|
 * (KC_HSM_KEK_BLOB_LEN bytes). The session object is destroyed. */
static int wrap_fresh(kc_hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, uint8_t *blob)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE type = CKK_AES;
	CK_ULONG key_len = KEK_BYTES, blob_len = KC_HSM_KEK_BLOB_LEN;
	CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0}, wrap;
	CK_RSA_PKCS_OAEP_PARAMS oaep;
	CK_ATTRIBUTE tmpl[] = {
		{CKA_CLASS, &cls, sizeof(cls)},
		{CKA_KEY_TYPE, &type, sizeof(type)},
		{CKA_VALUE_LEN, &key_len, sizeof(key_len)},
		WRAPPABLE_KEY_ATTRS,
	};
	CK_OBJECT_HANDLE kek;
	CK_RV rv;
	int rc = 0;

	rv = h->p11->C_GenerateKey(s, &gen, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &kek);
	if (rv != CKR_OK)
		return hsm_fail("C_GenerateKey", rv);
	oaep_mechanism(&oaep, &wrap);
	rv = h->p11->C_WrapKey(s, &wrap, pub, kek, blob, &blob_len);
	if (rv != CKR_OK) {
		rc = hsm_fail("C_WrapKey", rv);
	} else if (blob_len != KC_HSM_KEK_BLOB_LEN) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: wrapped KEK is %lu bytes, expected %d",
			 (unsigned long)blob_len, KC_HSM_KEK_BLOB_LEN);
		rc = MICA_EHSM;
	}
	rv = h->p11->C_DestroyObject(s, kek);
	if (rv != CKR_OK)
		(void)hsm_fail("C_DestroyObject", rv);
	return rc;
}

int kc_hsm_kek_create(kc_hsm *h, uint8_t **wrapped, size_t *wrapped_len)
{
	CK_OBJECT_HANDLE root_pub;
	CK_SESSION_HANDLE s;
	uint8_t *blob = NULL;
	int rc;

	if (wrapped)
		*wrapped = NULL;
	if (wrapped_len)
		*wrapped_len = 0;
	if (!h || !wrapped || !wrapped_len)
		return MICA_EINVAL;
	rc = session_get(h, &s);
	if (rc)
		return rc;
	rc = find_key(h, s, KC_HSM_ROOT_LABEL, CKO_PUBLIC_KEY, &root_pub);
	if (rc)
		goto out;
	blob = malloc(KC_HSM_KEK_BLOB_LEN);
	if (!blob) {
		rc = MICA_ENOMEM;
		goto out;
	}
	rc = wrap_fresh(h, s, root_pub, blob);
	if (rc)
		goto out;
	*wrapped = blob;
	*wrapped_len = KC_HSM_KEK_BLOB_LEN;
	blob = NULL;
out:
	free(blob);
	session_put(h, s, true);
	return rc;
}

/* SoftHSM 2.6.1 reports a failed integrity check (an RSA-OAEP decoding
 * error in C_UnwrapKey, a GCM tag mismatch in C_Decrypt) as
 * CKR_GENERAL_ERROR, not CKR_ENCRYPTED_DATA_INVALID / CKR_WRAPPED_KEY_INVALID
 * as PKCS#11 suggests. It is taken as a rejection of the input only if the
 * token still answers on the same session right after; a token that has
 * failed is MICA_EHSM. */
static bool input_rejected(kc_hsm *h, CK_SESSION_HANDLE s, CK_RV rv)
{
	CK_SESSION_INFO info;

	switch (rv) {
	case CKR_ENCRYPTED_DATA_INVALID:
	case CKR_ENCRYPTED_DATA_LEN_RANGE:
	case CKR_WRAPPED_KEY_INVALID:
	case CKR_WRAPPED_KEY_LEN_RANGE:
		return true;
	case CKR_GENERAL_ERROR:
		return h->p11->C_GetSessionInfo(s, &info) == CKR_OK;
	default:
		return false;
	}
}

/* C_UnwrapKey into |login_session|, which outlives every pool session, so
 * the KEK stays usable from all of them. Called with login_lock held. */
static int unwrap_kek(kc_hsm *h, const uint8_t *wrapped, size_t len, CK_OBJECT_HANDLE *obj)
{
	/* Every attribute of the root's unwrap template, with its value, and
	 * CKA_PRIVATE (which the template leaves to the caller). */
	CK_ATTRIBUTE tmpl[] = {KEK_TEMPLATE_ATTRS, {CKA_PRIVATE, (void *)&yes, sizeof(yes)}};
	CK_OBJECT_HANDLE root_priv;
	CK_RSA_PKCS_OAEP_PARAMS oaep;
	CK_MECHANISM mech;
	CK_ULONG key_len = 0;
	CK_RV rv;
	int rc;

	rc = find_key(h, h->login_session, KC_HSM_ROOT_LABEL, CKO_PRIVATE_KEY, &root_priv);
	if (rc)
		return rc;
	oaep_mechanism(&oaep, &mech);
	rv = h->p11->C_UnwrapKey(h->login_session, &mech, root_priv, (CK_BYTE_PTR)wrapped, len,
				 tmpl, sizeof(tmpl) / sizeof(tmpl[0]), obj);
	if (input_rejected(h, h->login_session, rv)) {
		MICA_LOG(MICA_LOG_WARN, "hsm: KEK blob rejected by the root key: %s", ckr_name(rv));
		return MICA_EAUTH;
	}
	if (rv != CKR_OK)
		return hsm_fail("C_UnwrapKey", rv);
	/* OAEP authenticates nothing about the content: anyone with the root
	 * public key can wrap a key of any length. Refuse anything but AES-256
	 * where the module tells the length. SoftHSM 2.6.1 does not: it refuses
	 * CKA_VALUE_LEN in an unwrap template (CKR_ATTRIBUTE_READ_ONLY) and
	 * leaves it 0 on the unwrapped object, so there a blob around a 16-byte
	 * key would load as AES-128; the integrity of the stored blobs rests on
	 * the database's access control. */
	rc = get_ulong(h, h->login_session, *obj, CKA_VALUE_LEN, &key_len);
	if (rc == 0 && key_len != 0 && key_len != KEK_BYTES) {
		MICA_LOG(MICA_LOG_WARN, "hsm: KEK blob holds a %lu-byte key, not %d",
			 (unsigned long)key_len, KEK_BYTES);
		rc = MICA_EAUTH;
	}
	if (rc)
		(void)h->p11->C_DestroyObject(h->login_session, *obj);
	return rc;
}

int kc_hsm_kek_load(kc_hsm *h, const uint8_t *wrapped, size_t len, kc_hsm_key **kek)
{
	kc_hsm_key *k;
	int rc;

	if (kek)
		*kek = NULL;
	if (!h || !wrapped || !kek)
		return MICA_EINVAL;
	if (len < KC_HSM_KEK_BLOB_LEN)
		return MICA_ETRUNCATED;
	if (len > KC_HSM_KEK_BLOB_LEN)
		return MICA_ETOOBIG;
	k = calloc(1, sizeof(*k));
	if (!k)
		return MICA_ENOMEM;
	k->owner = h;
	pthread_mutex_lock(&h->login_lock);
	rc = unwrap_kek(h, wrapped, len, &k->obj);
	pthread_mutex_unlock(&h->login_lock);
	if (rc) {
		free(k);
		return rc;
	}
	*kek = k;
	return 0;
}

void kc_hsm_key_free(kc_hsm *h, kc_hsm_key *kek)
{
	if (!kek)
		return;
	if (h && kek->owner == h) {
		pthread_mutex_lock(&h->login_lock);
		CK_RV rv = h->p11->C_DestroyObject(h->login_session, kek->obj);
		pthread_mutex_unlock(&h->login_lock);
		if (rv != CKR_OK)
			(void)hsm_fail("C_DestroyObject", rv);
	}
	free(kek);
}

/* Whether a refusal of C_UnwrapKey is the token enforcing a template (as
 * opposed to failing). */
static bool template_refusal(CK_RV rv)
{
	return rv == CKR_TEMPLATE_INCONSISTENT || rv == CKR_TEMPLATE_INCOMPLETE ||
	       rv == CKR_ATTRIBUTE_VALUE_INVALID || rv == CKR_ATTRIBUTE_READ_ONLY ||
	       rv == CKR_KEY_FUNCTION_NOT_PERMITTED || rv == CKR_ACTION_PROHIBITED;
}

/* Whether the root private key |priv| (with its public half |pub|) refuses
 * the attack of issue 18: unwrapping a KEK as readable, and with the
 * protective attributes left out. *enforced is false if either unwrap
 * succeeds (the object made is destroyed at once). */
static int probe_template(kc_hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
			  CK_OBJECT_HANDLE pub, bool *enforced)
{
	static const CK_BBOOL t = CK_TRUE, f = CK_FALSE;
	CK_ATTRIBUTE readable[] = {
		{CKA_CLASS, (void *)&kek_class, sizeof(kek_class)},
		{CKA_KEY_TYPE, (void *)&kek_type, sizeof(kek_type)},
		{CKA_TOKEN, (void *)&f, sizeof(f)},
		{CKA_SENSITIVE, (void *)&f, sizeof(f)},
		{CKA_EXTRACTABLE, (void *)&t, sizeof(t)},
	};
	CK_ATTRIBUTE omitted[] = {
		{CKA_CLASS, (void *)&kek_class, sizeof(kek_class)},
		{CKA_KEY_TYPE, (void *)&kek_type, sizeof(kek_type)},
		{CKA_TOKEN, (void *)&f, sizeof(f)},
	};
	struct {
		CK_ATTRIBUTE *tmpl;
		CK_ULONG n;
	} probes[] = {{readable, 5}, {omitted, 3}};
	CK_RSA_PKCS_OAEP_PARAMS oaep;
	CK_MECHANISM mech;
	CK_OBJECT_HANDLE obj;
	uint8_t blob[KC_HSM_KEK_BLOB_LEN];
	int rc;

	*enforced = false;
	rc = wrap_fresh(h, s, pub, blob);
	if (rc)
		return rc;
	oaep_mechanism(&oaep, &mech);
	for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
		CK_RV rv = h->p11->C_UnwrapKey(s, &mech, priv, blob, sizeof(blob), probes[i].tmpl,
					       probes[i].n, &obj);
		if (rv == CKR_OK) {
			(void)h->p11->C_DestroyObject(s, obj);
			return 0;
		}
		if (!template_refusal(rv))
			return hsm_fail("C_UnwrapKey (template probe)", rv);
	}
	*enforced = true;
	return 0;
}

int kc_hsm_root_check(kc_hsm *h)
{
	CK_OBJECT_HANDLE priv, pub;
	CK_SESSION_HANDLE s;
	bool enforced = false;
	int rc;

	if (!h)
		return MICA_EINVAL;
	rc = session_get(h, &s);
	if (rc)
		return rc;
	if ((rc = find_key(h, s, KC_HSM_ROOT_LABEL, CKO_PRIVATE_KEY, &priv)) != 0 ||
	    (rc = find_key(h, s, KC_HSM_ROOT_LABEL, CKO_PUBLIC_KEY, &pub)) != 0 ||
	    (rc = probe_template(h, s, priv, pub, &enforced)) != 0)
		goto out;
	if (!enforced) {
		MICA_LOG(
			MICA_LOG_ERROR,
			"hsm: the root key \"%s\" lets a PIN holder unwrap KEKs in readable form:"
			" it was made before unwrap templates (issue 18). Run `mica keycenter"
			" migrate-root` once (docs/operations.md); until then this token is refused",
			KC_HSM_ROOT_LABEL);
		rc = MICA_ESTATE;
	}
out:
	session_put(h, s, true);
	return rc;
}

/* A root key pair found by label, paired by CKA_ID. */
struct root_pair {
	CK_OBJECT_HANDLE priv, pub;
	bool enforced;
};

/* Every root pair on the token (at most |cap|); *n gets how many. */
static int find_roots(kc_hsm *h, CK_SESSION_HANDLE s, struct root_pair *pairs, size_t cap,
		      size_t *n)
{
	CK_OBJECT_CLASS priv_class = CKO_PRIVATE_KEY, pub_class = CKO_PUBLIC_KEY;
	const char *label = KC_HSM_ROOT_LABEL;
	CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &priv_class, sizeof(priv_class)},
			       {CKA_LABEL, (void *)label, strlen(label)}};
	CK_OBJECT_HANDLE privs[4];
	CK_ULONG np = 0;
	int rc;

	*n = 0;
	rc = find_objects(h, s, tmpl, 2, privs, 4, &np);
	if (rc)
		return rc;
	if (np > cap) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: %lu root keys on the token; expected at most %zu",
			 (unsigned long)np, cap);
		return MICA_EHSM;
	}
	for (CK_ULONG i = 0; i < np; i++) {
		uint8_t id[64];
		CK_ATTRIBUTE ida = {CKA_ID, id, sizeof(id)};
		CK_RV rv = h->p11->C_GetAttributeValue(s, privs[i], &ida, 1);
		CK_ATTRIBUTE pt[] = {{CKA_CLASS, &pub_class, sizeof(pub_class)},
				     {CKA_LABEL, (void *)label, strlen(label)},
				     {CKA_ID, id, 0}};
		CK_OBJECT_HANDLE pub[2];
		CK_ULONG npub = 0;

		if (rv != CKR_OK)
			return hsm_fail("C_GetAttributeValue(CKA_ID)", rv);
		pt[2].ulValueLen = ida.ulValueLen;
		rc = find_objects(h, s, pt, 3, pub, 2, &npub);
		if (rc)
			return rc;
		if (npub != 1) {
			MICA_LOG(MICA_LOG_ERROR, "hsm: a root private key has %lu public halves",
				 (unsigned long)npub);
			return MICA_EHSM;
		}
		pairs[i].priv = privs[i];
		pairs[i].pub = pub[0];
		rc = probe_template(h, s, privs[i], pub[0], &pairs[i].enforced);
		if (rc)
			return rc;
	}
	*n = np;
	return 0;
}

static void destroy_pair(kc_hsm *h, CK_SESSION_HANDLE s, const struct root_pair *p)
{
	CK_RV rv = h->p11->C_DestroyObject(s, p->priv);
	if (rv != CKR_OK)
		(void)hsm_fail("C_DestroyObject(root private)", rv);
	rv = h->p11->C_DestroyObject(s, p->pub);
	if (rv != CKR_OK)
		(void)hsm_fail("C_DestroyObject(root public)", rv);
}

/* Whether |blob| unwraps under |priv| as a KEK (the object is destroyed). */
static bool unwraps_under(kc_hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
			  const uint8_t *blob, size_t len)
{
	CK_ATTRIBUTE tmpl[] = {KEK_TEMPLATE_ATTRS};
	CK_RSA_PKCS_OAEP_PARAMS oaep;
	CK_MECHANISM mech;
	CK_OBJECT_HANDLE obj;

	oaep_mechanism(&oaep, &mech);
	if (h->p11->C_UnwrapKey(s, &mech, priv, (CK_BYTE_PTR)blob, len, tmpl,
				sizeof(tmpl) / sizeof(tmpl[0]), &obj) != CKR_OK)
		return false;
	(void)h->p11->C_DestroyObject(s, obj);
	return true;
}

/* Move every KEK from the legacy pair |old| to a new pair made here. */
static int migrate_from(kc_hsm *h, CK_SESSION_HANDLE s, const struct root_pair *old,
			const uint8_t *const *blobs, size_t n, kc_hsm_commit_fn commit, void *arg)
{
	/* Session objects that exist only to be re-wrapped: readable by
	 * nothing, extractable because C_WrapKey needs it. The legacy root has
	 * no unwrap template, so it allows them. */
	CK_ATTRIBUTE tmpl[] = {
		{CKA_CLASS, (void *)&kek_class, sizeof(kek_class)},
		{CKA_KEY_TYPE, (void *)&kek_type, sizeof(kek_type)},
		WRAPPABLE_KEY_ATTRS,
	};
	CK_OBJECT_HANDLE *keks = NULL;
	uint8_t **fresh = NULL;
	struct root_pair made = {0};
	bool have_new = false;
	CK_RSA_PKCS_OAEP_PARAMS oaep;
	CK_MECHANISM mech;
	size_t loaded = 0;
	int rc = MICA_ENOMEM;

	if (!(keks = calloc(n ? n : 1, sizeof(*keks))) ||
	    !(fresh = calloc(n ? n : 1, sizeof(*fresh))))
		goto out;
	oaep_mechanism(&oaep, &mech);
	for (; loaded < n; loaded++) {
		CK_RV rv = h->p11->C_UnwrapKey(s, &mech, old->priv, (CK_BYTE_PTR)blobs[loaded],
					       KC_HSM_KEK_BLOB_LEN, tmpl,
					       sizeof(tmpl) / sizeof(tmpl[0]), &keks[loaded]);
		if (rv != CKR_OK) {
			MICA_LOG(MICA_LOG_ERROR,
				 "hsm: stored KEK %zu does not unwrap under the old"
				 " root: %s; nothing was changed",
				 loaded, ckr_name(rv));
			rc = MICA_EAUTH;
			goto out;
		}
	}
	rc = generate_root(h, s, &made.pub, &made.priv);
	if (rc)
		goto out;
	have_new = true;
	for (size_t i = 0; i < n; i++) {
		CK_ULONG len = KC_HSM_KEK_BLOB_LEN;
		CK_RV rv;

		if (!(fresh[i] = malloc(KC_HSM_KEK_BLOB_LEN))) {
			rc = MICA_ENOMEM;
			goto out;
		}
		oaep_mechanism(&oaep, &mech);
		rv = h->p11->C_WrapKey(s, &mech, made.pub, keks[i], fresh[i], &len);
		if (rv != CKR_OK || len != KC_HSM_KEK_BLOB_LEN) {
			rc = rv != CKR_OK ? hsm_fail("C_WrapKey", rv) : MICA_EHSM;
			goto out;
		}
	}
	/* The stored blobs change in one transaction; only then does the old
	 * pair go. A crash in between leaves two pairs, which the next run
	 * resolves (kc_hsm_root_migrate()). */
	rc = commit((const uint8_t *const *)fresh, n, arg);
	if (rc)
		goto out;
	have_new = false;
	destroy_pair(h, s, old);
	MICA_LOG(MICA_LOG_INFO, "hsm: %zu KEKs moved to a new root key with an unwrap template", n);
out:
	if (have_new)
		destroy_pair(h, s, &made);
	for (size_t i = 0; i < loaded; i++)
		(void)h->p11->C_DestroyObject(s, keks[i]);
	for (size_t i = 0; fresh && i < n; i++)
		free(fresh[i]);
	free(fresh);
	free(keks);
	return rc;
}

int kc_hsm_root_migrate(kc_hsm *h, const uint8_t *const *blobs, size_t n, kc_hsm_commit_fn commit,
			void *arg)
{
	struct root_pair pairs[2];
	CK_SESSION_HANDLE s;
	size_t np = 0;
	int rc;

	if (!h || (n && !blobs) || !commit)
		return MICA_EINVAL;
	rc = session_get(h, &s);
	if (rc)
		return rc;
	rc = find_roots(h, s, pairs, 2, &np);
	if (rc)
		goto out;
	if (np == 0) {
		rc = MICA_ENOTFOUND;
		goto out;
	}
	if (np == 2) {
		/* An earlier run stopped between its commit and the removal of the
		 * old pair, or before its commit. The stored blobs say which. */
		struct root_pair *fresh = pairs[0].enforced ? &pairs[0] : &pairs[1];
		struct root_pair *old = pairs[0].enforced ? &pairs[1] : &pairs[0];

		if (pairs[0].enforced == pairs[1].enforced) {
			MICA_LOG(MICA_LOG_ERROR,
				 "hsm: two root keys, %s with an unwrap template;"
				 " not guessing which to keep",
				 fresh->enforced ? "both" : "neither");
			rc = MICA_EHSM;
			goto out;
		}
		if (n == 0 || unwraps_under(h, s, fresh->priv, blobs[0], KC_HSM_KEK_BLOB_LEN)) {
			MICA_LOG(MICA_LOG_WARN,
				 "hsm: finishing an interrupted migration: the stored"
				 " KEKs are under the new root; removing the old one");
			destroy_pair(h, s, old);
			rc = 0;
			goto out;
		}
		MICA_LOG(MICA_LOG_WARN, "hsm: an interrupted migration left an unused new root;"
					" removing it and starting again");
		destroy_pair(h, s, fresh);
		pairs[0] = *old;
	}
	if (pairs[0].enforced) {
		rc = MICA_EEXISTS;
		goto out;
	}
	rc = migrate_from(h, s, &pairs[0], blobs, n, commit, arg);
out:
	session_put(h, s, true);
	return rc;
}

/* ---- AES-GCM inside the token -------------------------------------------- */

/* CK_GCM_PARAMS as PKCS#11 v2.40 defines it (pIv, ulIvLen, ulIvBits, pAAD,
 * ulAADLen, ulTagBits), which is both p11-kit's layout and the one SoftHSM
 * 2.6.1 reads. v3.0 dropped ulIvBits; a module built against v3.0 headers
 * would misread this struct, which the round-trip tests would catch. */
static void gcm_mechanism(CK_GCM_PARAMS *gcm, CK_MECHANISM *mech, const uint8_t *nonce,
			  const void *aad, size_t aad_size)
{
	memset(gcm, 0, sizeof(*gcm));
	gcm->pIv = (CK_BYTE_PTR)nonce;
	gcm->ulIvLen = KC_HSM_NONCE_LEN;
	gcm->ulIvBits = 8 * KC_HSM_NONCE_LEN;
	gcm->pAAD = (CK_BYTE_PTR)aad;
	gcm->ulAADLen = aad_size;
	gcm->ulTagBits = 8 * KC_HSM_TAG_LEN;
	mech->mechanism = CKM_AES_GCM;
	mech->pParameter = gcm;
	mech->ulParameterLen = sizeof(*gcm);
}

static bool key_ok(const kc_hsm *h, const kc_hsm_key *kek)
{
	return h && kek && kek->owner == h;
}

int kc_hsm_seal(kc_hsm *h, const kc_hsm_key *kek, const void *aad, size_t aad_size, const void *pt,
		size_t pt_len, uint8_t **out, size_t *out_len)
{
	/* PKCS#11 wants a non-NULL data pointer even for no data. */
	static const uint8_t empty[1];
	CK_GCM_PARAMS gcm;
	CK_MECHANISM mech;
	CK_SESSION_HANDLE s;
	CK_ULONG ct_len;
	uint8_t *buf = NULL;
	bool session = false, reuse = true;
	CK_RV rv;
	int rc;

	if (out)
		*out = NULL;
	if (out_len)
		*out_len = 0;
	if (!key_ok(h, kek) || !out || !out_len || (!aad && aad_size) || (!pt && pt_len))
		return MICA_EINVAL;
	if (pt_len > SIZE_MAX - KC_HSM_SEAL_OVERHEAD)
		return MICA_ETOOBIG;
	buf = malloc(pt_len + KC_HSM_SEAL_OVERHEAD);
	if (!buf)
		return MICA_ENOMEM;
	rc = mica_random(buf, KC_HSM_NONCE_LEN);
	if (rc)
		goto out;
	rc = session_get(h, &s);
	if (rc)
		goto out;
	session = true;
	gcm_mechanism(&gcm, &mech, buf, aad ? aad : empty, aad_size);
	rv = h->p11->C_EncryptInit(s, &mech, kek->obj);
	if (rv != CKR_OK) {
		rc = hsm_fail("C_EncryptInit", rv);
		goto out;
	}
	ct_len = pt_len + KC_HSM_TAG_LEN;
	rv = h->p11->C_Encrypt(s, (CK_BYTE_PTR)(pt ? pt : empty), pt_len, buf + KC_HSM_NONCE_LEN,
			       &ct_len);
	if (rv != CKR_OK) {
		reuse = false;
		rc = hsm_fail("C_Encrypt", rv);
		goto out;
	}
	if (ct_len != pt_len + KC_HSM_TAG_LEN) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: AES-GCM gave %lu bytes for %zu",
			 (unsigned long)ct_len, pt_len);
		rc = MICA_EHSM;
		goto out;
	}
	*out = buf;
	*out_len = pt_len + KC_HSM_SEAL_OVERHEAD;
	buf = NULL;
out:
	if (session)
		session_put(h, s, reuse);
	free(buf);
	return rc;
}

int kc_hsm_open_sealed(kc_hsm *h, const kc_hsm_key *kek, const void *aad, size_t aad_size,
		       const uint8_t *in, size_t in_len, uint8_t **pt, size_t *pt_len)
{
	static const uint8_t empty[1];
	CK_GCM_PARAMS gcm;
	CK_MECHANISM mech;
	CK_SESSION_HANDLE s;
	CK_ULONG n;
	size_t cap = 0;
	uint8_t *buf = NULL;
	bool session = false, reuse = true;
	CK_RV rv;
	int rc;

	if (pt)
		*pt = NULL;
	if (pt_len)
		*pt_len = 0;
	if (!key_ok(h, kek) || !in || !pt || !pt_len || (!aad && aad_size))
		return MICA_EINVAL;
	if (in_len < KC_HSM_SEAL_OVERHEAD)
		return MICA_ETRUNCATED;
	/* SoftHSM 2.6.1 wants room for the whole input, tag included, before
	 * it decrypts (CKR_BUFFER_TOO_SMALL otherwise), though it writes only
	 * the plaintext. This also keeps |buf| non-NULL for an empty one. */
	cap = in_len - KC_HSM_NONCE_LEN;
	buf = malloc(cap);
	if (!buf)
		return MICA_ENOMEM;
	rc = session_get(h, &s);
	if (rc)
		goto out;
	session = true;
	gcm_mechanism(&gcm, &mech, in, aad ? aad : empty, aad_size);
	rv = h->p11->C_DecryptInit(s, &mech, kek->obj);
	if (rv != CKR_OK) {
		rc = hsm_fail("C_DecryptInit", rv);
		goto out;
	}
	n = cap;
	rv = h->p11->C_Decrypt(s, (CK_BYTE_PTR)in + KC_HSM_NONCE_LEN, in_len - KC_HSM_NONCE_LEN,
			       buf, &n);
	if (rv != CKR_OK && input_rejected(h, s, rv)) {
		reuse = false;
		rc = MICA_EAUTH;
		goto out;
	}
	if (rv != CKR_OK) {
		reuse = false;
		rc = hsm_fail("C_Decrypt", rv);
		goto out;
	}
	if (n != cap - KC_HSM_TAG_LEN) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: AES-GCM gave %lu bytes for %zu", (unsigned long)n,
			 cap - KC_HSM_TAG_LEN);
		rc = MICA_EHSM;
		goto out;
	}
	*pt = buf;
	*pt_len = n;
	buf = NULL;
out:
	if (session)
		session_put(h, s, reuse);
	if (buf) {
		mica_wipe(buf, cap);
		free(buf);
	}
	return rc;
}

/* ---- Audit signatures ---------------------------------------------------- */

/* PKCS#11 returns an ECDSA signature as r || s, each as long as the field;
 * OpenSSL and X.509 tools expect the DER ECDSA-Sig-Value. */
static int ecdsa_der(const uint8_t *raw, size_t raw_len, uint8_t **der, size_t *der_len)
{
	ECDSA_SIG *sig = ECDSA_SIG_new();
	BIGNUM *r = NULL, *s = NULL;
	uint8_t *p;
	int len, rc = MICA_ECRYPTO;

	if (!sig)
		goto out;
	r = BN_bin2bn(raw, (int)(raw_len / 2), NULL);
	s = BN_bin2bn(raw + raw_len / 2, (int)(raw_len / 2), NULL);
	if (!r || !s || ECDSA_SIG_set0(sig, r, s) != 1)
		goto out;
	r = s = NULL; /* owned by |sig| now */
	len = i2d_ECDSA_SIG(sig, NULL);
	if (len <= 0)
		goto out;
	*der = malloc((size_t)len);
	if (!*der) {
		rc = MICA_ENOMEM;
		goto out;
	}
	p = *der;
	if (i2d_ECDSA_SIG(sig, &p) != len) {
		free(*der);
		*der = NULL;
		goto out;
	}
	*der_len = (size_t)len;
	rc = 0;
out:
	BN_free(s);
	BN_free(r);
	ECDSA_SIG_free(sig);
	return rc;
}

int kc_hsm_sign(kc_hsm *h, const uint8_t digest[KC_HSM_DIGEST_LEN], uint8_t **sig, size_t *sig_len)
{
	CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE key;
	uint8_t raw[2 * P256_FIELD_LEN];
	CK_ULONG raw_len = sizeof(raw);
	bool reuse = true;
	CK_RV rv;
	int rc;

	if (sig)
		*sig = NULL;
	if (sig_len)
		*sig_len = 0;
	if (!h || !digest || !sig || !sig_len)
		return MICA_EINVAL;
	rc = session_get(h, &s);
	if (rc)
		return rc;
	rc = find_key(h, s, KC_HSM_AUDIT_LABEL, CKO_PRIVATE_KEY, &key);
	if (rc)
		goto out;
	rv = h->p11->C_SignInit(s, &mech, key);
	if (rv != CKR_OK) {
		rc = hsm_fail("C_SignInit", rv);
		goto out;
	}
	rv = h->p11->C_Sign(s, (CK_BYTE_PTR)digest, KC_HSM_DIGEST_LEN, raw, &raw_len);
	if (rv != CKR_OK) {
		reuse = false;
		rc = hsm_fail("C_Sign", rv);
		goto out;
	}
	if (raw_len != sizeof(raw)) {
		MICA_LOG(MICA_LOG_ERROR, "hsm: ECDSA signature is %lu bytes, expected %zu",
			 (unsigned long)raw_len, sizeof(raw));
		rc = MICA_EHSM;
		goto out;
	}
	rc = ecdsa_der(raw, sizeof(raw), sig, sig_len);
out:
	session_put(h, s, reuse);
	return rc;
}
