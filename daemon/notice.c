/* notice.c: builds the notice served in place of a rejected message: a short,
 * well-formed RFC 5322 text/plain message that says why and where the original is. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "notice.h"

#define WRAP	76	/* body lines are folded here (RFC 5322 recommends 78) */

void
notice_sanitize(char *out, size_t outlen, const char *s, size_t len)
{
	size_t o = 0;
	int space = 0;

	if (outlen == 0)
		return;
	for (size_t i = 0; i < len && o + 1 < outlen; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			space = o > 0;
			continue;
		}
		if (space && o + 2 < outlen)
			out[o++] = ' ';
		space = 0;
		out[o++] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
	}
	out[o] = '\0';
}

int
notice_header(const char *msg, size_t len, const char *name,
    char *out, size_t outlen)
{
	size_t nlen = strlen(name), i = 0;

	if (outlen > 0)
		out[0] = '\0';
	while (i < len) {
		const char *lf = memchr(msg + i, '\n', len - i);
		size_t end = lf ? (size_t)(lf - msg) : len;
		size_t l = end - i;
		if (l == 0 || (l == 1 && msg[i] == '\r'))
			return 0;	/* the blank line: end of the header */
		if (l > nlen && strncasecmp(msg + i, name, nlen) == 0 &&
		    msg[i + nlen] == ':') {
			/* The field runs on over continuation lines. */
			size_t vstart = i + nlen + 1, vend = end + 1;
			while (vend < len && (msg[vend] == ' ' || msg[vend] == '\t')) {
				lf = memchr(msg + vend, '\n', len - vend);
				vend = lf ? (size_t)(lf - msg) + 1 : len;
			}
			if (vend > len)
				vend = len;
			notice_sanitize(out, outlen, msg + vstart, vend - vstart);
			return 1;
		}
		i = end + 1;
	}
	return 0;
}

static int
put(struct buf *b, const char *fmt, ...)
{
	char line[1200];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return -1;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	return buf_append(b, line, (size_t)n);
}

/* Free text from a filter as body lines: CRLF line ends, no bare CR or NUL,
 * long lines folded at white space (or cut, if they have none). */
static int
put_text(struct buf *b, const char *s, const char *indent)
{
	size_t len = strlen(s), i = 0, ilen = strlen(indent);

	while (i < len) {
		const char *lf = memchr(s + i, '\n', len - i);
		size_t end = lf ? (size_t)(lf - s) : len;
		/* one source line, folded */
		do {
			size_t n = end - i;
			if (n + ilen > WRAP) {
				size_t cut = WRAP - ilen;
				while (cut > 20 && s[i + cut] != ' ')
					cut--;
				if (cut <= 20)
					cut = WRAP - ilen;
				n = cut;
			}
			if (buf_append(b, indent, ilen) < 0)
				return -1;
			for (size_t k = i; k < i + n; k++) {
				char c = s[k];
				if (c == '\r')
					continue;
				if (c == '\0' || c == '\t')
					c = c ? ' ' : '?';
				if (buf_append(b, &c, 1) < 0)
					return -1;
			}
			if (buf_append(b, "\r\n", 2) < 0)
				return -1;
			i += n;
			while (i < end && s[i] == ' ')
				i++;
		} while (i < end);
		i = end + 1;
	}
	return 0;
}

int
notice_build(struct buf *out, const struct notice_info *ni,
    const char *orig, size_t origlen)
{
	char from[256], subj[256], date[128], reason[200], user[256], who[128];
	char now[64];
	struct tm tm;
	size_t start = out->len;

	notice_header(orig, origlen, "From", from, sizeof(from));
	notice_header(orig, origlen, "Subject", subj, sizeof(subj));
	notice_header(orig, origlen, "Date", date, sizeof(date));
	notice_sanitize(reason, sizeof(reason), ni->reason ? ni->reason : "",
	    ni->reason ? strlen(ni->reason) : 0);
	notice_sanitize(who, sizeof(who), ni->filter, strlen(ni->filter));
	/* The To address: the remote user, qualified with the server's name
	 * when it carries no domain of its own. */
	notice_sanitize(user, sizeof(user), ni->user ? ni->user : "",
	    ni->user ? strlen(ni->user) : 0);
	for (char *p = user; *p; p++)
		if (*p == '<' || *p == '>' || *p == ' ' || *p == '"')
			*p = '_';
	localtime_r(&ni->now, &tm);
	strftime(now, sizeof(now), "%a, %d %b %Y %H:%M:%S %z", &tm);

	if (put(out, "From: \"Mail filter\" <MAILER-DAEMON@%s>\r\n", ni->hostname) < 0 ||
	    (user[0] != '\0' ?
	     put(out, "To: <%s%s%s>\r\n", user, strchr(user, '@') ? "" : "@",
	         strchr(user, '@') ? "" : ni->upstream_host) :
	     put(out, "To: undisclosed-recipients:;\r\n")) < 0 ||
	    put(out, "Date: %s\r\n", now) < 0 ||
	    /* PROTOCOL.md: "[rejected] <original subject>"; the reason
	     * follows, so that a glance at the list says why. */
	    put(out, "Subject: [rejected] %.200s%s%.120s\r\n",
	        subj[0] ? subj : "(no subject)", reason[0] ? " - " : "",
	        reason) < 0 ||
	    put(out, "Message-ID: <%lld.%s.%u.notice@%s>\r\n", (long long)ni->now,
	        ni->sid, ni->msgno, ni->hostname) < 0 ||
	    put(out, "MIME-Version: 1.0\r\n"
	        "Content-Type: text/plain; charset=utf-8\r\n"
	        "Content-Transfer-Encoding: 8bit\r\n"
	        "Auto-Submitted: auto-generated\r\n") < 0 ||
	    put(out, "X-POP3Proxy-Rejected: %s%s%s\r\n", who,
	        reason[0] ? ": " : "", reason) < 0 ||
	    put(out, "\r\n") < 0)
		goto fail;

	if (put(out, "A message in your mailbox was rejected by the mail filter\r\n"
	    "\"%s\" and is not shown to you.\r\n\r\n", who) < 0)
		goto fail;
	if (reason[0] != '\0' && (put(out, "Reason:\r\n") < 0 ||
	    put_text(out, reason, "  ") < 0 || put(out, "\r\n") < 0))
		goto fail;
	if (ni->text != NULL && ni->text[0] != '\0' &&
	    (put_text(out, ni->text, "") < 0 || put(out, "\r\n") < 0))
		goto fail;
	if (put(out, "The original message:\r\n") < 0 ||
	    put(out, "  From:    %.200s\r\n", from[0] ? from : "(none)") < 0 ||
	    put(out, "  Subject: %.200s\r\n", subj[0] ? subj : "(none)") < 0 ||
	    put(out, "  Date:    %.100s\r\n", date[0] ? date : "(none)") < 0 ||
	    put(out, "  Size:    %llu octets\r\n", (unsigned long long)ni->size) < 0 ||
	    (ni->uidl != NULL &&
	     put(out, "  UIDL:    %.70s\r\n", ni->uidl) < 0) ||
	    put(out, "  Session: %s, message %u\r\n", ni->sid, ni->msgno) < 0 ||
	    put(out, "\r\nIt has been kept, and your mail administrator can "
	        "release it:\r\n") < 0 ||
	    put_text(out, ni->kept, "  ") < 0)
		goto fail;
	return 0;
fail:
	out->len = start;
	return -1;
}
