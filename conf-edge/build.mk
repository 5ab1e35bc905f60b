# conf-edge: TLS-only conferencing data edge (PSOM relay). See conf-edge/README.md.
CE_SRCS := $(filter-out conf-edge/main.c,$(wildcard conf-edge/*.c))
CE_OBJS := $(CE_SRCS:%.c=$(OBJ)/%.o)
ifneq ($(wildcard conf-edge/main.c),)
$(eval $(call daemon,conf-edge,$(CE_OBJS) $(OBJ)/conf-edge/main.o))
endif
$(foreach t,$(patsubst tests/unit/%.c,%,$(wildcard tests/unit/ce_*_test.c)),$(eval $(call unit_test,$(t),$(CE_OBJS))))
BENCHES += bench-conf
# Then the same with conf-edge built on OpenSSL (build-openssl/), nginx beside it in that run
# too (every point of bench-conf is a TLS one); skipped when this build is the OpenSSL one.
bench-conf: all
	tests/bench/bench_conf.sh $(BUILD)
ifneq ($(TLS),openssl)
	$(Q)$(MAKE) --no-print-directory TLS=openssl SAN= all build-openssl/bench/ce_backend \
	    build-openssl/bench/tlsload build-openssl/bench/tls_bench
	@echo; echo "# again, conf-edge on OpenSSL"
	tests/bench/bench_conf.sh build-openssl
endif

# bench-conf tools: the backend both proxies front (tests/bench/ce_backend.c, on libcommon, whose
# common/mux.c is the mux codec) and an OpenSSL load client (tests/bench/tlsload.c).
$(BUILD)/bench/ce_backend: $(OBJ)/tests/bench/ce_backend.o $(BUILD)/libcommon.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD  $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(BUILD)/bench/tlsload: tests/bench/tlsload.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC  $@")
	$(Q)$(CC) -std=c11 -D_GNU_SOURCE -O2 $(WARN) $< -lssl -lcrypto -o $@
bench-conf: $(BUILD)/bench/ce_backend $(BUILD)/bench/tlsload $(BUILD)/bench/tls_bench
