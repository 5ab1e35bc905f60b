# Control-channel schema: protoc-c generates C at build time into $(BUILD)/gen.
PROTO_SRC := $(BUILD)/gen/proto/control.pb-c.c
PROTO_HDR := $(BUILD)/gen/proto/control.pb-c.h

$(PROTO_SRC) $(PROTO_HDR) &: proto/control.proto
	@mkdir -p $(BUILD)/gen
	$(Q)protoc-c --c_out=$(BUILD)/gen proto/control.proto

$(OBJ)/gen/proto/control.pb-c.o: $(PROTO_SRC)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) -Wno-error -c $< -o $@
