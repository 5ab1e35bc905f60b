# access-edge/: the SIP access edge daemon, its pure modules, unit tests and benchmark.
AE_SRCS := $(filter-out access-edge/main.c,$(wildcard access-edge/*.c))
AE_OBJS := $(AE_SRCS:%.c=$(OBJ)/%.o)
$(eval $(call daemon,access-edge,$(AE_OBJS) $(OBJ)/access-edge/main.o))
$(foreach t,$(patsubst tests/unit/%.c,%,$(wildcard tests/unit/ae_*_test.c)),$(eval $(call unit_test,$(t),$(AE_OBJS))))
BENCHES += bench-sip
# The TLS point runs the OpenSSL build too (build-openssl/), beside the default one and Kamailio.
bench-sip: all
	$(Q)$(MAKE) --no-print-directory TLS=openssl SAN= all
	$(Q)tests/bench/bench_sip.sh $(BUILD)
$(OBJ)/access-edge/main.o: $(BUILD)/gen/version.h
