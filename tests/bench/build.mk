# Benchmarks that live under tests/bench/: make bench-tls.
BENCHES += bench-tls

$(BUILD)/bench/tls_bench: $(OBJ)/tests/bench/tls_bench.o $(BUILD)/libcommon.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD  $@")
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# The timed run holds /tmp/bench.lock so benchmarks on a shared machine do not overlap.
bench-tls: $(BUILD)/bench/tls_bench
	$(Q)flock /tmp/bench.lock $(BUILD)/bench/tls_bench $(BENCH_TLS_SECS)
