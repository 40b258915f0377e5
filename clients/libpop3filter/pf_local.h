/* pf_local.h: libpop3filter's private structures, shared by its .c files:
 * the filter, its proxy connections and their requests. Not installed. */
#ifndef PF_LOCAL_H
#define PF_LOCAL_H

#include <ev.h>

#include "fp.h"
#include "pop3filter.h"

#define PF_DEFAULT_INFLIGHT	64
#define PF_DRAIN_TIMEOUT	60.0	/* then cancel what the author holds */
#define PF_READ_BURST		8	/* recv() calls per read event */
#define PF_DRAIN_QUIET		0.25	/* idle this long after drain: close */

struct pf_conn;

struct pf_req {
	struct pf		*f;
	struct pf_conn		*conn;		/* NULL once cancelled */
	struct pf_req		*prev, *next;	/* in conn->reqs */
	struct pf_message	 m;
	char			*store;		/* strings and body of m */
	void			*data;
	struct fp_edit		*edits;		/* names/values malloc'ed */
	size_t			 nedits, edits_cap;
	char			*reason;
	struct fp_str		*tags;		/* ptrs malloc'ed */
	size_t			 ntags;
	bool			 has_score;
	double			 score;
	bool			 cancelled;
	bool			 in_cancel;	/* inside the cancel callback */
	bool			 in_message;	/* inside the message callback */
	bool			 answered;	/* verdict sent; freed on return */
};

enum pf_conn_state {
	PF_CONN_HELLO,		/* waiting for the proxy's hello */
	PF_CONN_READY,		/* requests flow */
	PF_CONN_CLOSING,	/* flush what is queued, then close */
};

struct pf_conn {
	struct pf		*f;
	struct pf_conn		*prev, *next;	/* in f->conns */
	unsigned		 serial;	/* for log lines */
	int			 fd;
	ev_io			 rio, wio;
	ev_timer		 linger;	/* draining: quiet, then close */
	struct fp_reader	 rd;
	struct fp_buf		 out;
	size_t			 out_off;	/* sent part of out */
	enum pf_conn_state	 state;
	struct fp_params	 params;
	uint32_t		 granted;	/* params.actions & declared */
	struct pf_req		*reqs;		/* live requests */
	unsigned		 nreqs;
	bool			 drain_sent;
	int			 busy;		/* inside our read callback */
	bool			 dead;		/* close once busy drops to 0 */
};

struct pf {
	struct ev_loop		*loop;
	int			 lfd;
	ev_io			 lio;
	ev_timer		 retry;		/* accept() after EMFILE */
	ev_timer		 drain_timer;
	ev_signal		 sigterm, sigint;
	char			*path;
	mode_t			 mode;
	char			 name[FP_MAX_NAME + 1];
	unsigned		 actions;	/* declared */
	unsigned		 commands;
	uint64_t		 max_message_size;
	uint32_t		 max_inflight;
	uint32_t		 max_frame;	/* what we accept */
	pf_message_cb		 on_message;
	void			*message_arg;
	pf_cancel_cb		 on_cancel;
	void			*cancel_arg;
	pf_log_cb		 on_log;
	void			*log_arg;
	enum pf_log_level	 level;
	struct pf_conn		*conns;
	unsigned		 nconns, serial;
	unsigned		 inflight;	/* live requests, all conns */
	bool			 listening, draining, running, done;
	char			*drain_reason;
	int			 signals;	/* SIGTERM/SIGINT seen */
	enum pf_errno		 err;
	char			 errbuf[256];
};

/* pf.c */
int	pf_fail_with(struct pf *, enum pf_errno, const char *fmt, ...)
	    __attribute__((format(printf, 3, 4)));
void	pf_clear_err(struct pf *);
void	pf_check_drained(struct pf *);

/* pf_conn.c */
void	pf_conn_accept(struct pf *, int fd);
void	pf_conn_drain(struct pf_conn *, const char *reason);
void	pf_conn_close(struct pf_conn *, const char *why);
int	pf_conn_send(struct pf_conn *, const struct fp_buf *frame);
void	pf_conn_maybe_finish(struct pf_conn *);

/* pf_req.c */
struct pf_req *pf_req_new(struct pf_conn *, const struct fp_request *);
void	pf_req_deliver(struct pf_req *);
void	pf_req_cancel(struct pf_req *, const char *why);

#endif
