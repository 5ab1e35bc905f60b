# conf-edge: TLS-only conferencing data edge (PSOM relay). See conf-edge/README.md.
CE_SRCS := $(filter-out conf-edge/main.c,$(wildcard conf-edge/*.c))
CE_OBJS := $(CE_SRCS:%.c=$(OBJ)/%.o)
ifneq ($(wildcard conf-edge/main.c),)
$(eval $(call daemon,conf-edge,$(CE_OBJS) $(OBJ)/conf-edge/main.o))
endif
$(foreach t,$(patsubst tests/unit/%.c,%,$(wildcard tests/unit/ce_*_test.c)),$(eval $(call unit_test,$(t),$(CE_OBJS))))
BENCHES += bench-conf
bench-conf: all ; tests/bench/bench_conf.sh $(BUILD)
