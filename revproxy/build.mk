# revproxy/: the HTTP reverse proxy. Protocol modules (http1, route, headers) are pure and
# also linked into the unit tests and the fuzzer.
RP_SRCS := $(filter-out revproxy/main.c,$(wildcard revproxy/*.c))
RP_OBJS := $(RP_SRCS:%.c=$(OBJ)/%.o)
$(eval $(call daemon,revproxy,$(RP_OBJS) $(OBJ)/revproxy/main.o))
$(foreach t,$(patsubst tests/unit/%.c,%,$(wildcard tests/unit/rp_*_test.c)),$(eval $(call unit_test,$(t),$(RP_OBJS))))
BENCHES += bench-http
bench-http: all $(BUILD)/bench/tls_bench ; tests/bench/bench_http.sh $(BUILD)
