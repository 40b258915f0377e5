/* tls.h: OpenSSL contexts for both sides: verified client contexts towards
 * mail servers, and the server context (reloadable) towards mail clients. */
#ifndef TLS_H
#define TLS_H

#include <openssl/ssl.h>

struct config;

struct tls {
	SSL_CTX *up;		/* towards servers: verifying */
	SSL_CTX *up_insecure;	/* towards servers matched by --insecure-upstream */
	SSL_CTX *down;		/* towards clients; NULL without a certificate */
};

/* Build the contexts from the configuration; -1 (logged) on error. */
int tls_init(struct tls *, const struct config *);
/* Reload the certificate and key (SIGHUP); on error the old ones stay. */
int tls_reload(struct tls *, const struct config *);
void tls_free(struct tls *);

/* Does --insecure-upstream name this host? */
int tls_insecure_for(const struct config *, const char *host);

/*
 * A client-side SSL for a connection to `host` (a name, or an IP literal
 * when host_is_ip): SNI for names, and the name or address checked against
 * the certificate unless insecure. NULL on error.
 */
SSL *tls_client_new(struct tls *, const char *host, int host_is_ip, int insecure);
SSL *tls_server_new(struct tls *);

/* Why the last handshake on ssl failed, for the client's -ERR and the log. */
void tls_error_text(SSL *ssl, char *out, size_t outlen);

#endif
