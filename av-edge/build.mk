# av-edge/: the STUN/TURN media relay, its unit tests, the load generator and av-probe.
# The daemon's wiring (main.c and the modules its start/stop sequence calls) is linked into
# the daemon only; the relay's modules (AV_OBJS) into the unit tests too.
AV_DAEMON_SRCS := av-edge/main.c av-edge/edge.c av-edge/threads.c av-edge/director_link.c \
                  av-edge/drain.c
AV_SRCS := $(filter-out $(AV_DAEMON_SRCS) av-edge/probe.c,$(wildcard av-edge/*.c))
AV_OBJS := $(AV_SRCS:%.c=$(OBJ)/%.o)
$(OBJ)/av-edge/director_link.o: $(BUILD)/gen/version.h
$(eval $(call daemon,av-edge,$(AV_OBJS) $(AV_DAEMON_SRCS:%.c=$(OBJ)/%.o)))
$(foreach t,$(patsubst tests/unit/%.c,%,$(wildcard tests/unit/av_*_test.c)),$(eval $(call unit_test,$(t),$(AV_OBJS))))

# turnload: our batching TURN load generator (tests/bench/turnload.c), used by bench-av.
ifneq ($(wildcard tests/bench/turnload.c),)
$(BIN)/turnload: $(OBJ)/tests/bench/turnload.o $(OBJ)/av-edge/stun.o $(BUILD)/libcommon.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD  $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
all: $(BIN)/turnload
endif

# av-probe: SRTP through two allocations (libsrtp2).
ifneq ($(wildcard av-edge/probe.c),)
$(BIN)/av-probe: $(OBJ)/av-edge/probe.o $(OBJ)/av-edge/stun.o $(BUILD)/libcommon.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD  $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -lsrtp2 -o $@
all: $(BIN)/av-probe
endif

BENCHES += bench-av
bench-av: all ; tests/bench/bench_av.sh $(BUILD)
