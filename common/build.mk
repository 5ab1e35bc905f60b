# common/: every *.c here goes into libcommon.a, with the generated protobuf code; of the
# TLS backends only the one TLS= picks (tls_mbed_*.c: mbedTLS, tls_openssl_*.c: OpenSSL).
# common/sip/ holds the SIP code more than one daemon speaks (access-edge and the Director's
# registrar).
TLS_MBED_SRCS := $(wildcard common/tls_mbed_*.c)
TLS_OPENSSL_SRCS := $(wildcard common/tls_openssl_*.c)
TLS_OTHER := $(if $(filter openssl,$(TLS)),$(TLS_MBED_SRCS),$(TLS_OPENSSL_SRCS))
COMMON_SRCS := $(filter-out $(TLS_OTHER),$(wildcard common/*.c common/sip/*.c))
COMMON_OBJS := $(COMMON_SRCS:%.c=$(OBJ)/%.o) $(OBJ)/gen/proto/control.pb-c.o

# Sources that include the generated header must wait for it.
$(COMMON_SRCS:%.c=$(OBJ)/%.o): | $(PROTO_HDR)

$(BUILD)/libcommon.a: $(COMMON_OBJS)
	@mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

# One cmocka binary per module: tests/unit/<module>_test.c.
COMMON_TESTS := $(patsubst tests/unit/%.c,%,$(wildcard tests/unit/common_*_test.c))
$(foreach t,$(COMMON_TESTS),$(eval $(call unit_test,$(t),)))
