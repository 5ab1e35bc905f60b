# director/: the control-plane hub daemon, its unit tests, and the ctl-probe edge stand-in.
DIR_SRCS := $(filter-out director/main.c,$(wildcard director/*.c))
# The SIP framing and splicing (common/sip/) and the mux codec come from libcommon.a.
DIR_OBJS := $(DIR_SRCS:%.c=$(OBJ)/%.o)
$(eval $(call daemon,director,$(DIR_OBJS) $(OBJ)/director/main.o))
$(foreach t,$(patsubst tests/unit/%.c,%,$(wildcard tests/unit/director_*_test.c)),$(eval $(call unit_test,$(t),$(DIR_OBJS))))

# ctl-probe: connects to the Director like an edge would and prints what it receives.
$(BIN)/ctl-probe: $(OBJ)/tests/tools/ctl_probe.o $(BUILD)/libcommon.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD  $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
$(OBJ)/tests/tools/ctl_probe.o: $(BUILD)/gen/version.h
all: $(BIN)/ctl-probe

# The ACME client (director/acme_*.c) speaks HTTPS to the CA with libcurl and reads its JSON
# with jansson: linked into the Director (and its unit tests) only, not into the edges.
DIR_ACME_CFLAGS := $(shell pkg-config --cflags libcurl jansson)
DIR_ACME_LIBS := $(shell pkg-config --libs libcurl jansson)
$(OBJ)/director/%.o $(OBJ)/tests/unit/director_%.o: CFLAGS += $(DIR_ACME_CFLAGS)
$(BIN)/director $(BUILD)/tests/director_%: LDLIBS += $(DIR_ACME_LIBS)
$(BUILD)/fuzz/fuzz_acme_json: LDLIBS += $(DIR_ACME_LIBS)
