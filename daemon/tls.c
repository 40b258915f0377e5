/* tls.c: OpenSSL set-up: TLS 1.2 or newer, verification by default (system
 * store or --upstream-ca), host name or IP checks, SNI, and SIGHUP reload. */
#include <fnmatch.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "log.h"
#include "tls.h"

static int
tls_version(const char *s)
{
	if (s == NULL || strcmp(s, "1.2") == 0)
		return TLS1_2_VERSION;
	if (strcmp(s, "1.3") == 0)
		return TLS1_3_VERSION;
	return -1;
}

static void
tls_log_errors(const char *what)
{
	unsigned long e;
	char buf[256];

	while ((e = ERR_get_error()) != 0) {
		ERR_error_string_n(e, buf, sizeof(buf));
		log_error(NULL, "%s: %s", what, buf);
	}
}

static SSL_CTX *
tls_ctx_common(const SSL_METHOD *m, const struct config *cfg)
{
	SSL_CTX *ctx = SSL_CTX_new(m);

	if (ctx == NULL)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, tls_version(cfg->tls_min_version));
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
	    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
	    SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
	if (cfg->tls_ciphers && !SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers)) {
		log_error(NULL, "--tls-ciphers %s: no usable cipher", cfg->tls_ciphers);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

static SSL_CTX *
tls_server_ctx(const struct config *cfg)
{
	SSL_CTX *ctx = tls_ctx_common(TLS_server_method(), cfg);

	if (ctx == NULL)
		goto fail;
	if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
		log_error(NULL, "cannot load certificate chain %s", cfg->tls_cert);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1) {
		log_error(NULL, "cannot load private key %s", cfg->tls_key);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		log_error(NULL, "%s does not match %s", cfg->tls_key, cfg->tls_cert);
		goto fail;
	}
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	return ctx;
fail:
	tls_log_errors("TLS");
	SSL_CTX_free(ctx);
	return NULL;
}

int
tls_init(struct tls *t, const struct config *cfg)
{
	memset(t, 0, sizeof(*t));
	t->up = tls_ctx_common(TLS_client_method(), cfg);
	t->up_insecure = tls_ctx_common(TLS_client_method(), cfg);
	if (t->up == NULL || t->up_insecure == NULL)
		goto fail;
	SSL_CTX_set_verify(t->up, SSL_VERIFY_PEER, NULL);
	if (cfg->upstream_ca != NULL) {
		if (SSL_CTX_load_verify_locations(t->up, cfg->upstream_ca, NULL) != 1) {
			log_error(NULL, "--upstream-ca %s: cannot load", cfg->upstream_ca);
			goto fail;
		}
	} else if (SSL_CTX_set_default_verify_paths(t->up) != 1) {
		log_error(NULL, "cannot load the system CA store");
		goto fail;
	}
	SSL_CTX_set_verify(t->up_insecure, SSL_VERIFY_NONE, NULL);
	if (cfg->tls_cert != NULL) {
		t->down = tls_server_ctx(cfg);
		if (t->down == NULL)
			goto fail;
	}
	return 0;
fail:
	tls_log_errors("TLS");
	tls_free(t);
	return -1;
}

int
tls_reload(struct tls *t, const struct config *cfg)
{
	if (cfg->tls_cert == NULL)
		return 0;
	SSL_CTX *ctx = tls_server_ctx(cfg);
	if (ctx == NULL) {
		log_error(NULL, "reload failed: keeping the certificate in use "
		    "(after --user, the files must be readable by that user)");
		return -1;
	}
	/* Sessions hold a reference to the old context through their SSL. */
	SSL_CTX_free(t->down);
	t->down = ctx;
	log_notice(NULL, "reloaded %s and %s", cfg->tls_cert, cfg->tls_key);
	return 0;
}

void
tls_free(struct tls *t)
{
	SSL_CTX_free(t->up);
	SSL_CTX_free(t->up_insecure);
	SSL_CTX_free(t->down);
	memset(t, 0, sizeof(*t));
}

int
tls_insecure_for(const struct config *cfg, const char *host)
{
	for (int i = 0; i < cfg->ninsecure; i++)
		if (fnmatch(cfg->insecure[i], host, FNM_CASEFOLD) == 0)
			return 1;
	return 0;
}

SSL *
tls_client_new(struct tls *t, const char *host, int host_is_ip, int insecure)
{
	SSL *ssl = SSL_new(insecure ? t->up_insecure : t->up);

	if (ssl == NULL)
		return NULL;
	if (!host_is_ip)
		SSL_set_tlsext_host_name(ssl, host);
	if (!insecure) {
		X509_VERIFY_PARAM *p = SSL_get0_param(ssl);
		X509_VERIFY_PARAM_set_hostflags(p,
		    X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		int ok = host_is_ip ? X509_VERIFY_PARAM_set1_ip_asc(p, host) :
		    X509_VERIFY_PARAM_set1_host(p, host, 0);
		if (ok != 1) {
			SSL_free(ssl);
			return NULL;
		}
	}
	SSL_set_connect_state(ssl);
	return ssl;
}

SSL *
tls_server_new(struct tls *t)
{
	if (t->down == NULL)
		return NULL;
	SSL *ssl = SSL_new(t->down);
	if (ssl != NULL)
		SSL_set_accept_state(ssl);
	return ssl;
}

void
tls_error_text(SSL *ssl, char *out, size_t outlen)
{
	long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
	unsigned long e = ERR_peek_last_error();

	if (v != X509_V_OK) {
		snprintf(out, outlen, "certificate verification failed: %s",
		    X509_verify_cert_error_string(v));
	} else if (e != 0) {
		char buf[200];
		ERR_error_string_n(e, buf, sizeof(buf));
		/* "error:0A000086:SSL routines::certificate verify failed" */
		const char *r = strrchr(buf, ':');
		snprintf(out, outlen, "TLS handshake failed: %s", r ? r + 1 : buf);
	} else {
		snprintf(out, outlen, "TLS handshake failed");
	}
	ERR_clear_error();
}
