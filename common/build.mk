# common/: every *.c here goes into libcommon.a, with the generated protobuf code. common/sip/
# holds the SIP code more than one daemon speaks (access-edge and the Director's registrar).
COMMON_SRCS := $(wildcard common/*.c common/sip/*.c)
COMMON_OBJS := $(COMMON_SRCS:%.c=$(OBJ)/%.o) $(OBJ)/gen/proto/control.pb-c.o

# Sources that include the generated header must wait for it.
$(COMMON_SRCS:%.c=$(OBJ)/%.o): | $(PROTO_HDR)

$(BUILD)/libcommon.a: $(COMMON_OBJS)
	@mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

# One cmocka binary per module: tests/unit/<module>_test.c.
COMMON_TESTS := $(patsubst tests/unit/%.c,%,$(wildcard tests/unit/common_*_test.c))
$(foreach t,$(COMMON_TESTS),$(eval $(call unit_test,$(t),)))
