# revproxy/: the HTTP reverse proxy. Protocol modules (http1, route, headers) are pure and
# also linked into the unit tests and the fuzzer.
RP_SRCS := $(filter-out revproxy/main.c,$(wildcard revproxy/*.c))
RP_OBJS := $(RP_SRCS:%.c=$(OBJ)/%.o)
$(eval $(call daemon,revproxy,$(RP_OBJS) $(OBJ)/revproxy/main.o))
$(foreach t,$(patsubst tests/unit/%.c,%,$(wildcard tests/unit/rp_*_test.c)),$(eval $(call unit_test,$(t),$(RP_OBJS))))
BENCHES += bench-http
# Then the HTTPS points again with revproxy built on OpenSSL (build-openssl/), nginx beside it
# in that run too; skipped when this build is the OpenSSL one.
bench-http: all $(BUILD)/bench/tls_bench
	$(Q)tests/bench/bench_http.sh $(BUILD)
ifneq ($(TLS),openssl)
	$(Q)$(MAKE) --no-print-directory TLS=openssl SAN= all build-openssl/bench/tls_bench
	@echo; echo "# the HTTPS points again, revproxy on OpenSSL"
	$(Q)ONLY=https_1k,https_1k_close,https_full_hs,https_4m tests/bench/bench_http.sh build-openssl
endif
