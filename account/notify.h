/* notify.h - the account service's notifier: verification codes, password
 * changes, new-device logins and freezes reach users by e-mail or SMS
 * through a sender chosen per channel by configuration.
 *
 * Senders:
 * - "outbox" (development, the default): the message becomes a row of
 *   account.notification (schema/0005_account_notification.sql), inserted
 *   through the caller's database handle, so inside a mica_db_tx() it
 *   commits or rolls back with the caller's change. `mica outbox list
 *   [--to ADDR]` prints the rows. (Not to be confused with the transactional
 *   event outbox, outbox.event, of lib/outbox.)
 * - "smtp" (e-mail): one SMTP session per message through libcurl.
 *   smtps:// uses implicit TLS; smtp:// must offer STARTTLS (required: codes
 *   never cross the network in clear). The server certificate is verified
 *   against ca_file, or the system store when ca_file is not set. Optional
 *   AUTH with smtp_user/smtp_password. The message carries From, To,
 *   Subject (RFC 2047 encoded when not ASCII), Date, Message-ID,
 *   MIME-Version and Content-Type text/plain; charset=utf-8; the body goes
 *   7bit when it is ASCII with short lines, else base64. Dot-stuffing and the
 *   final "." are libcurl's (tested).
 * - "webhook" (SMS): POST {"to": recipient, "text": body} as JSON to an
 *   https:// URL with mica_httpc (server verified against ca_file; a client
 *   certificate when cert_file/key_file are set). Never retried: a retry
 *   after a lost reply would send the SMS twice.
 * smtp and webhook send at once, outside any transaction: callers should
 * send after their transaction committed (or use the outbox sender, or emit
 * an outbox.event and send from its consumer), so a rolled-back change never
 * produced a message and a message is not sent once per transaction retry.
 * Security notices do the latter (account/notice.c, acct_notice_emit()):
 * only verification codes are sent directly.
 *
 * Privacy: bodies and subjects (they carry codes) are never logged;
 * recipients only through mica_mask_email/mica_mask_phone.
 *
 * Threads: one acct_notify serves every thread of the service.
 */
#ifndef ACCT_NOTIFY_H
#define ACCT_NOTIFY_H

#include <stdio.h>

#include "db.h"
#include "err.h"

enum acct_channel {
	ACCT_CHANNEL_EMAIL = 1,
	ACCT_CHANNEL_SMS = 2,
};

/* Limits checked by acct_notify_send(). */
#define ACCT_NOTIFY_SUBJECT_MAX 200	 /* bytes of UTF-8 */
#define ACCT_NOTIFY_BODY_MAX (32 * 1024) /* bytes of UTF-8 */

typedef struct acct_notify_config {
	const char *email_mode;	     /* "outbox" (default when NULL or "") or "smtp" */
	const char *sms_mode;	     /* "outbox" (default when NULL or "") or "webhook" */
	const char *smtp_url;	     /* smtp mode: "smtps://host[:port]" or "smtp://host[:port]" */
	const char *smtp_from;	     /* smtp mode: sender address, e.g. "no-reply@mica.example" */
	const char *smtp_user;	     /* optional SMTP AUTH user name */
	const char *smtp_password;   /* its password (the content of a *_file setting) */
	const char *sms_webhook_url; /* webhook mode: "https://..." */
	const char *ca_file;	     /* PEM CA: required for webhook; optional for smtp */
	const char *cert_file;	     /* optional client certificate for the webhook (mTLS) */
	const char *key_file;	     /* its key (both or neither) */
	long timeout_ms;	     /* per send; 0: 10000 */
} acct_notify_config;

typedef struct acct_notify acct_notify;

/* Creates a notifier from |cfg|; every string is copied (the password copy is
 * wiped when freed). *out is freed with acct_notify_free(). Returns 0,
 * MICA_ECONFIG (unknown mode, or a setting its mode needs is missing or
 * malformed: smtp_url scheme, smtp_from address, webhook URL not https://,
 * missing ca_file for the webhook, cert_file without key_file, user without
 * password, negative timeout), MICA_EINVAL (NULL argument) or MICA_ENOMEM. */
MICA_WUR int acct_notify_new(acct_notify **out, const acct_notify_config *cfg);

/* Frees |n|; NULL is fine. No send may be running. */
void acct_notify_free(acct_notify *n);

/* Sends |body| to |recipient| on |channel| with the configured sender.
 * |recipient| is an e-mail address (ASCII: local@domain, at most 254 bytes)
 * for ACCT_CHANNEL_EMAIL and a phone number ("+" optional, then 6 to 20
 * digits; the account service normalises numbers first) for
 * ACCT_CHANNEL_SMS. |subject| is required for e-mail and may be NULL for SMS
 * (the webhook sends only the body; the outbox keeps it): UTF-8, no control
 * characters, at most ACCT_NOTIFY_SUBJECT_MAX bytes. |body| is UTF-8 text
 * (line breaks and tabs allowed, no other control characters), 1 to
 * ACCT_NOTIFY_BODY_MAX bytes. |db| is used only by the outbox sender (it may
 * be NULL otherwise); the row is inserted in whatever transaction |db| is in.
 * All arguments are borrowed.
 * Returns 0 or:
 *   MICA_EINVAL     a bad argument (checked before anything is sent or
 *                   written), or the webhook answered 400/404/422
 *   MICA_EPERM      the SMTP server refused our login, or the webhook
 *                   answered 401/403
 *   MICA_ELIMITED   the webhook answered 429
 *   MICA_ETLS       TLS failed (handshake, verification, or STARTTLS not
 *                   offered)
 *   MICA_ETIMEOUT   no answer within timeout_ms
 *   MICA_EIO        the SMTP server could not be reached or refused the
 *                   message
 *   MICA_EHTTP      the webhook could not be reached or answered another
 *                   non-2xx status
 *   MICA_ENOMEM, or as mica_db_exec() (outbox). */
MICA_WUR int acct_notify_send(acct_notify *n, mica_db *db, enum acct_channel channel,
			      const char *recipient, const char *subject, const char *body);

/* Longest message key of acct_notify_send_keyed() (bytes). */
#define ACCT_NOTIFY_KEY_MAX 64

/* acct_notify_send() for a message that may be sent again (a retried
 * notice): |key| (1 to ACCT_NOTIFY_KEY_MAX of A-Z a-z 0-9 . -, unique to
 * the message and its recipient; NULL: none) becomes the e-mail's
 * Message-ID "<key@sender domain>", so that a repeat after a lost answer
 * is the same message to the receiving mail system and user agents. The
 * outbox and the webhook ignore it. MICA_EINVAL for a malformed key; else as
 * acct_notify_send(). */
MICA_WUR int acct_notify_send_keyed(acct_notify *n, mica_db *db, enum acct_channel channel,
				    const char *recipient, const char *subject, const char *body,
				    const char *key);

/* "email" or "sms" (the outbox's channel column), NULL for anything else. */
const char *acct_channel_name(enum acct_channel channel);

/* Prints the newest |limit| (1..10000) rows of account.notification, oldest
 * first (newest last), restricted to |recipient| (compared
 * case-insensitively; NULL for all), to |out|, one block per message:
 *   time:    2026-11-22T02:40:31Z
 *   channel: email
 *   to:      alice@example.com
 *   subject: Your verification code
 *   body:
 *     Your code is 123456.
 *   <blank line>
 * Control characters other than line breaks and tabs are printed as '?'.
 * *count (may be NULL) receives the number of blocks printed. Returns 0,
 * MICA_EINVAL, MICA_EIO (writing |out| failed) or as mica_db_exec(). */
MICA_WUR int acct_notify_outbox_list(mica_db *db, const char *recipient, int limit, FILE *out,
				     int *count);

#endif
