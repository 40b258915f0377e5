/* tool.h: pop3filter-test's shared pieces: a blocking client connection to a
 * filter (codec-framed, with raw sends for hostile frames) and the two modes. */
#ifndef TOOL_H
#define TOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fp.h"

#define TOOL_NAME	"pop3filter-test/1.0"
#define TOOL_MAX_FRAME	FP_DEFAULT_MAX_FRAME
#define TOOL_INFLIGHT	64

struct opts {
	const char	*socket;
	bool		 conformance;
	bool		 show;
	bool		 raw;		/* send files as they are (no CRLF) */
	bool		 top;		/* replay as TOP n */
	uint64_t	 top_lines;
	int		 timeout_ms;	/* for one expected answer */
	uint32_t	 inflight;	/* most requests we keep in flight */
	long		 pid;		/* --pid: test drain with SIGTERM */
	size_t		 large_cap;	/* largest message conformance sends */
	bool		 verbose;
	char		**files;
	int		 nfiles;
};

struct tconn {
	int			 fd;
	struct fp_reader	 rd;
	bool			 eof;
	const char		*eof_why;
};

/* tconn.c */
int	tc_open(struct tconn *, const char *path, char *why, size_t);
void	tc_close(struct tconn *);
/* Send all octets; reads what the filter sends meanwhile into the reader,
 * so neither side can block the other. 0 or -1 (peer gone). */
int	tc_send(struct tconn *, const void *, size_t);
int	tc_send_buf(struct tconn *, const struct fp_buf *);
/* 1: *m holds the next message (valid until the next tc_* call); 0: timed
 * out; -1: the codec refused a frame (*err says why); -2: EOF or reset. */
int	tc_next(struct tconn *, struct fp_msg *, struct fp_err *, int timeout_ms);
/* The standard hello (every capability) with these versions. */
void	tc_hello(struct fp_hello *, const uint32_t *versions, size_t n);

/* Hand-built msgpack for frames the codec will not write (unknown keys,
 * wrong types). Appends to b; frame_begin/frame_end add the length prefix. */
size_t	mp_frame_begin(struct fp_buf *);
void	mp_frame_end(struct fp_buf *, size_t start);
void	mp_map(struct fp_buf *, uint32_t n);
void	mp_array(struct fp_buf *, uint32_t n);
void	mp_str(struct fp_buf *, const char *);
void	mp_uint(struct fp_buf *, uint64_t);
void	mp_bin(struct fp_buf *, const void *, size_t);
void	mp_bool(struct fp_buf *, bool);
void	mp_nil(struct fp_buf *);
void	mp_raw(struct fp_buf *, const void *, size_t);

/* A request for message number n with this body, encoded by the codec. */
int	tool_request(struct fp_buf *, uint64_t id, uint64_t n, const char *body,
	    size_t len, bool top, uint64_t top_lines);

/* Print a verdict or error for a request, optionally with the result. */
void	tool_print_answer(const char *label, const struct fp_msg *,
	    const char *body, size_t len, bool show);

/* replay.c, conformance.c: exit status. */
int	replay_run(const struct opts *);
int	conformance_run(const struct opts *);

#endif
