# Fuzz targets: tests/fuzz/fuzz_<parser>.c, built with clang -fsanitize=fuzzer.
FUZZ_CC := clang
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -I. -I$(BUILD)/gen $(shell pkg-config --cflags $(PKGS)) \
               -fsanitize=fuzzer,address,undefined -DFUZZING -DSUITE_VERSION="\"fuzz\""
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=$(BUILD)/fuzz/%)
# Each fuzz target lists the sources it needs on its first line: "// fuzz-sources: a.c b.c".
# common/tls.c there means the TLS backend's files: common/tls_mbed_*.c, with TLS=openssl
# common/tls_openssl_*.c (common/build.mk lists them).
FUZZ_TLS := $(if $(filter openssl,$(TLS)),$(TLS_OPENSSL_SRCS),$(TLS_MBED_SRCS))
$(BUILD)/fuzz/%: tests/fuzz/%.c $(PROTO_SRC) $(wildcard common/*.c common/sip/*.c) $(wildcard */*.c)
	@mkdir -p $(dir $@)
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) $< $$(sed -n '1s,^// fuzz-sources:,,p' $< | sed 's,common/tls\.c,$(FUZZ_TLS),') \
	    $(LDLIBS) -o $@

fuzz: $(FUZZ_BINS)

SECS ?= 60
fuzz-run: fuzz
	$(Q)set -e; for f in $(FUZZ_BINS); do n=$$(basename $$f); \
	    mkdir -p $(BUILD)/fuzz/corpus/$$n; \
	    dict=tests/fuzz/$${n#fuzz_}.dict; \
	    echo "== $$n ($(SECS)s)"; \
	    $$f -max_total_time=$(SECS) -print_final_stats=1 $$( [ -f $$dict ] && echo -dict=$$dict ) \
	        $(BUILD)/fuzz/corpus/$$n tests/fuzz/corpus/$${n#fuzz_} 2>&1 | tail -3; done

# make soak: SIP (sipp, 100 calls/s) and TURN (av-probe) soaks of SOAK_SECS each (default 600),
# with the Director killed (kill -9) in the middle of each, then the reload soak (soak-reload:
# each edge under TLS load, 100 reloads a minute; SOAK_SECONDS per edge, default 300); not
# part of make test.
SOAK_SECS ?= 600
soak: all
	$(Q)cd tests/soak && SOAK_SECS=$(SOAK_SECS) SUITE_BUILD=$(abspath $(BUILD)) \
	    python3 -m unittest -v test_soak
	$(Q)$(MAKE) --no-print-directory soak-reload
.PHONY: soak

# acme-dirstub: a Director stand-in that speaks the ACME control messages (CsrRequest,
# CertIssued, Challenge) on stdin commands, for the edges' ACME integration tests.
$(BIN)/acme-dirstub: $(OBJ)/tests/tools/acme_dirstub.o $(BUILD)/libcommon.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD  $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(OBJ)/tests/tools/acme_dirstub.o: $(BUILD)/gen/version.h
all: $(BIN)/acme-dirstub

# acme-alpn-serve: a TLS listener with an ACME challenge store filled from its command line,
# for tests/integ/test_acme_alpn.py (the daemons' stores are filled by the Director only).
$(BIN)/acme-alpn-serve: $(OBJ)/tests/tools/acme_alpn_serve.o $(BUILD)/libcommon.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD  $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(OBJ)/tests/tools/acme_alpn_serve.o: $(BUILD)/gen/version.h
all: $(BIN)/acme-alpn-serve
