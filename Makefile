# pop3proxyd: the one, non-recursive Makefile.
# Every program lands in bin/, every intermediate file in build/.

PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
LIBDIR  ?= $(PREFIX)/lib
INCDIR  ?= $(PREFIX)/include
MANDIR  ?= $(PREFIX)/share/man
DOCDIR  ?= $(PREFIX)/share/doc/pop3proxyd
DESTDIR ?=

CC      ?= cc
AR      ?= ar
CFLAGS  ?= -O2 -g
WERROR  ?= -Werror
PYTHON  ?= /usr/bin/python3

# Where objects and programs go. `make SAN=1 ...` builds everything with
# AddressSanitizer and UndefinedBehaviorSanitizer into build/san/ instead.
ifeq ($(SAN),1)
B       := build/san
BIN     := build/san/bin
CFLAGS  := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
           -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
else
B       := build
BIN     := bin
endif
PKGS     = libcares msgpack openssl

# Lazily expanded: pkg-config runs after scripts/deps.sh installed the packages.
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
WARN       = -Wall -Wextra -Wstrict-prototypes -Wwrite-strings -Wmissing-prototypes \
             -Wshadow -Wno-unused-parameter $(WERROR)
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -fPIC $(WARN) -MMD -MP \
             -Iprotocol -Idaemon -Iclients/libpop3filter -Iclients/bridge $(PKG_CFLAGS) $(CFLAGS)
LDLIBS     = -lev $(PKG_LIBS) -lm

obj = $(patsubst %.c,$(B)/%.o,$(1))

# --- the wire codec (protocol/) -------------------------------------------
PROTO_SRC := $(wildcard protocol/*.c)
PROTO_LIB := $(B)/libfp.a

# --- the daemon (daemon/): everything but main.c is the embeddable core ----
CORE_SRC := $(filter-out daemon/main.c,$(wildcard daemon/*.c))
CORE_LIB := $(B)/libproxy.a

# --- the filter library (clients/libpop3filter/) --------------------------
FLIB_SRC := $(wildcard clients/libpop3filter/*.c)
FLIB_A   := $(B)/libpop3filter.a
FLIB_SO  := $(B)/libpop3filter.so

# --- programs: bin/pop3proxyd, and one per clients/<name>/ or tests/bench/<name>/
CLIENT_PROGS := $(notdir $(patsubst %/,%,$(filter-out clients/libpop3filter/ clients/bridge/,$(wildcard clients/*/))))
# What the scanner bridges share (clients/bridge/): linked into each of them.
BRIDGE_SRC   := $(wildcard clients/bridge/*.c)
BRIDGE_PROGS := pop3filter-spamd pop3filter-clamd
BENCH_PROGS  := $(notdir $(patsubst %/,%,$(wildcard tests/bench/*/)))
PROGS := $(BIN)/pop3proxyd $(addprefix $(BIN)/,$(CLIENT_PROGS)) $(addprefix $(BIN)/,$(BENCH_PROGS))

# --- unit tests: tests/unit/test_*.c, each a program linking the libraries -
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(patsubst tests/unit/%.c,$(B)/tests/%,$(UNIT_SRC))

.PHONY: all deps test unit integration run install clean
# Keep the objects of unit tests (make would delete them as intermediates).
.SECONDARY:
.DEFAULT_GOAL := all

all: $(PROGS) $(if $(FLIB_SRC),$(FLIB_A) $(FLIB_SO))

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(PROTO_LIB): $(call obj,$(PROTO_SRC))
	@mkdir -p $(dir $@)
	rm -f $@ && $(AR) rcs $@ $^

$(CORE_LIB): $(call obj,$(CORE_SRC))
	@mkdir -p $(dir $@)
	rm -f $@ && $(AR) rcs $@ $^

$(FLIB_A): $(call obj,$(FLIB_SRC))
	@mkdir -p $(dir $@)
	rm -f $@ && $(AR) rcs $@ $^

$(FLIB_SO): $(call obj,$(FLIB_SRC)) $(PROTO_LIB)
	$(CC) -shared -Wl,-soname,libpop3filter.so.1 -o $@ $(call obj,$(FLIB_SRC)) $(PROTO_LIB) $(LDFLAGS) $(LDLIBS)

$(BIN)/pop3proxyd: $(B)/daemon/main.o $(CORE_LIB) $(PROTO_LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# A client program is every .c file of its folder, plus the libraries.
define client_prog
$(BIN)/$(1): $(call obj,$(wildcard clients/$(1)/*.c)) $(if $(filter $(BRIDGE_PROGS),$(1)),$(call obj,$(BRIDGE_SRC))) $(FLIB_A) $(PROTO_LIB)
	@mkdir -p $(BIN)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS)
endef
$(foreach p,$(CLIENT_PROGS),$(eval $(call client_prog,$(p))))

define bench_prog
$(BIN)/$(1): $(call obj,$(wildcard tests/bench/$(1)/*.c)) $(CORE_LIB) $(PROTO_LIB)
	@mkdir -p $(BIN)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS)
endef
$(foreach p,$(BENCH_PROGS),$(eval $(call bench_prog,$(p))))

$(B)/tests/%: $(B)/tests/unit/%.o $(CORE_LIB) $(if $(FLIB_SRC),$(FLIB_A)) $(PROTO_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

deps:
	@scripts/deps.sh build

# make test: install what is missing, build, run every test: the unit and
# integration tests, a short run of every fuzz target, and the unit and
# integration tests again against the ASan+UBSan build (test-san, below).
test:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory all $(UNIT_BIN)
	@$(MAKE) --no-print-directory unit integration
	@$(MAKE) --no-print-directory fuzz-quick
	@$(MAKE) --no-print-directory test-san

unit: $(UNIT_BIN)
	@scripts/run-unit.sh $(UNIT_BIN)

integration: all
	@mkdir -p build/test-logs
	cd tests/integration && $(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# make run: the main job. Build, then run the proxy (and the reference filter
# once it exists) in the foreground with working defaults.
run:
	@scripts/deps.sh run
	@$(MAKE) --no-print-directory all
	@scripts/run.sh

install: all
	install -d $(DESTDIR)$(BINDIR)
	install -m 755 $(PROGS) $(DESTDIR)$(BINDIR)/
	install -d $(DESTDIR)$(DOCDIR)
	install -m 644 README LICENSE protocol/PROTOCOL.md $(DESTDIR)$(DOCDIR)/
ifneq ($(FLIB_SRC),)
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR)
	install -m 644 clients/libpop3filter/pop3filter.h protocol/fp.h $(DESTDIR)$(INCDIR)/
	install -m 644 $(FLIB_A) $(PROTO_LIB) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(FLIB_SO) $(DESTDIR)$(LIBDIR)/libpop3filter.so.1
	ln -sf libpop3filter.so.1 $(DESTDIR)$(LIBDIR)/libpop3filter.so
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCDIR@|$(INCDIR)|g' clients/libpop3filter/pop3filter.pc.in \
	    > $(DESTDIR)$(LIBDIR)/pkgconfig/pop3filter.pc
endif

clean:
	rm -rf build bin

-include $(shell find $(B) -name '*.d' 2>/dev/null)

# --- bench (issue 7; owned by the benchmark: tests/bench/, scripts/bench*) ---
# make bench: every scenario, medians of 3 rounds, ~10 minutes; writes the
# table with the machine and the date to docs/BENCHMARKS.md.
# make bench-quick: one short round of each, under a minute; prints only.
.PHONY: bench bench-quick
bench:
	@scripts/deps.sh build
	@scripts/bench-setup.sh
	@$(MAKE) --no-print-directory all
	@$(PYTHON) scripts/bench.py --write

bench-quick:
	@scripts/deps.sh build
	@scripts/bench-setup.sh
	@$(MAKE) --no-print-directory all
	@$(PYTHON) scripts/bench.py --quick
# --- end of bench ---

# ==== fuzzing (owned by the fuzzing work, tests/fuzz/) =======================
# libFuzzer targets built with clang straight from the module sources (not the
# gcc objects) under ASan+UBSan into build/fuzz/. `make fuzz` runs each target
# FUZZ_SECONDS (60) in turn, `make fuzz-quick` 10 s each; seeds and kept
# regression inputs are tests/fuzz/corpus/<target>/, see docs/FUZZING.md.
FUZZ_CC      ?= clang-14
FUZZ_SECONDS ?= 60
FUZZ_QUICK_SECONDS ?= 10
FUZZ_FLAGS   := -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
                -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
                -Wall -Wextra -Wno-unused-parameter -Wno-duplicate-decl-specifier \
                -Idaemon -Iprotocol -Itests/fuzz -Iclients/libpop3filter \
                -Iclients/pop3filter-ref
FUZZ_TARGETS := fuzz_cmd fuzz_resp fuzz_route fuzz_codec fuzz_edit fuzz_session fuzz_mime
FUZZ_BINS    := $(addprefix build/fuzz/,$(FUZZ_TARGETS))
fuzz_cmd_SRC   := daemon/pop3.c daemon/base64.c
fuzz_resp_SRC  := daemon/pop3.c
fuzz_route_SRC := daemon/route.c daemon/policy.c
fuzz_codec_SRC := protocol/fp.c protocol/fp_edit.c
fuzz_edit_SRC  := protocol/fp.c protocol/fp_edit.c
# The whole daemon but main.c; upstream.c and tls.c are #included by the
# target, which replaces the connect step with socketpairs (the one seam)
# and builds the OpenSSL contexts once.
fuzz_session_SRC := $(filter-out daemon/main.c daemon/upstream.c daemon/tls.c,$(wildcard daemon/*.c)) \
                    protocol/fp.c protocol/fp_edit.c
fuzz_session_LIBS := -lev -lm
# pop3filter-ref's MIME walker and stripping, and the library's header helpers.
fuzz_mime_SRC  := clients/pop3filter-ref/mime.c clients/pop3filter-ref/strip.c \
                  clients/libpop3filter/pf_header.c

.PHONY: fuzz fuzz-quick fuzz-build fuzz-seeds

define fuzz_bin
build/fuzz/$(1): tests/fuzz/$(1).c tests/fuzz/fuzz.h $$($(1)_SRC) $$(wildcard daemon/*.h protocol/*.h) $$(if $$(filter fuzz_session,$(1)),daemon/upstream.c daemon/tls.c)
	@mkdir -p build/fuzz
	$$(FUZZ_CC) $$(FUZZ_FLAGS) $$(PKG_CFLAGS) -o $$@ $$< $$($(1)_SRC) $$($(1)_LIBS) $$(PKG_LIBS)
endef
$(foreach t,$(FUZZ_TARGETS),$(eval $(call fuzz_bin,$(t))))

fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	@tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_BINS)

fuzz-quick: fuzz-build
	@tests/fuzz/run.sh $(FUZZ_QUICK_SECONDS) $(FUZZ_BINS)

# Rewrites the generated seeds (codec frames, transcripts) in the corpus.
fuzz-seeds:
	@mkdir -p build/fuzz tests/fuzz/corpus
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE -g -Wno-duplicate-decl-specifier -Iprotocol \
	    $(PKG_CFLAGS) -o build/fuzz/mkseeds tests/fuzz/mkseeds.c $(fuzz_codec_SRC) $(PKG_LIBS)
	build/fuzz/mkseeds tests/fuzz/corpus
	/usr/bin/python3 tests/fuzz/mkseeds_session.py tests/fuzz/corpus/fuzz_session
# make test-san: the unit and integration tests against the ASan+UBSan build
# (build/san/); a leak, a memory error or undefined behaviour fails the run:
# the unit tests by their exit status, the proxy by the sanitizer report the
# integration fixtures look for in its log.
SAN_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=1 \
           UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
           LSAN_OPTIONS=print_suppressions=0 POP3PROXY_BIN_DIR=$(CURDIR)/build/san/bin
.PHONY: test-san
test-san:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory SAN=1 all
	@$(SAN_ENV) $(MAKE) --no-print-directory SAN=1 unit
	@$(SAN_ENV) $(MAKE) --no-print-directory SAN=1 integration
# ==== end of fuzzing =========================================================

# ==== soak (issue 8; owned by tests/integration/test_soak.py) ================
# make soak: the fault-injection soak for SOAK_SECONDS (600): clients, filters
# and Dovecots killed at random points (seed SOAK_SEED, printed). `make test`
# runs the same test for 75 s. Figures: build/test-logs/soak-summary-<N>s.json.
SOAK_SECONDS ?= 600
.PHONY: soak
soak: all
	@mkdir -p build/test-logs
	cd tests/integration && SOAK_SECONDS=$(SOAK_SECONDS) $(if $(SOAK_SEED),SOAK_SEED=$(SOAK_SEED)) \
	    $(PYTHON) -m pytest -q -s -p no:cacheprovider test_soak.py
# ==== end of soak ============================================================
