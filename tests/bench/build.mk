# Benchmarks that live under tests/bench/: make bench-tls.
BENCHES += bench-tls

$(BUILD)/bench/tls_bench: $(OBJ)/tests/bench/tls_bench.o $(BUILD)/libcommon.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD  $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# The timed run holds /tmp/bench.lock so benchmarks on a shared machine do not overlap.
# BENCH_TLS_SECS=N sets the CPU seconds per case (default 1.2: about 10 s per backend).
# bench-tls builds and runs both TLS backends (build/ and build-openssl/), one after the
# other; bench-tls-one runs the one TLS= picks.
bench-tls:
	$(Q)$(MAKE) --no-print-directory TLS=mbedtls SAN= bench-tls-one
	@echo
	$(Q)$(MAKE) --no-print-directory TLS=openssl SAN= bench-tls-one

bench-tls-one: $(BUILD)/bench/tls_bench
	$(Q)flock /tmp/bench.lock $(BUILD)/bench/tls_bench $(BENCH_TLS_SECS)

.PHONY: bench-tls-one

# turnload (linked in av-edge/build.mk) says its version.
$(OBJ)/tests/bench/turnload.o: $(BUILD)/gen/version.h
