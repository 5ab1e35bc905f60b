# Deployment targets.
#   make lab-test   the network-namespace lab (deploy/lab/): builds it, runs the lab tests in it,
#                   tears it down (root; the tests skip with the reason printed otherwise)
#   make lab-up / make lab-down   the lab by hand, with every built daemon started in it
#   make compose-test   the docker-compose lab end to end (deploy/compose/compose-test.sh, root):
#                   a private Docker engine, every image built from the Debian mirror, the lab up,
#                   the flows from the external client, everything torn down; not part of make test
#   make lab-clients  the browser test's npm packages, into $(BUILD)/lab-clients

lab-test: all lab-clients
	$(Q)python3 tests/run_tests.py --build $(BUILD) --only integ -k test_lab_

# The browser test's npm packages (deploy/lab/clients/web/package.json and its lock: JsSIP,
# playwright-core, esbuild to bundle JsSIP for the page) go into $(BUILD)/lab-clients, nothing into
# git. Without node or npm (or the registry) the browser test skips and says why.
LAB_WEB := deploy/lab/clients/web
$(BUILD)/lab-clients/jssip.js: $(LAB_WEB)/package.json $(LAB_WEB)/package-lock.json
	$(Q)mkdir -p $(@D) && cp $^ $(@D)/
	$(Q)if command -v npm >/dev/null; then \
	    (cd $(@D) && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build) || \
	    echo "lab-clients: npm ci failed; the browser test will skip" >&2; \
	else echo "lab-clients: npm is missing (deploy/install-deps.sh); the browser test will skip" >&2; fi

lab-clients: $(BUILD)/lab-clients/jssip.js

lab-up: all
	$(Q)EDGELAB_BUILD=$(abspath $(BUILD)) deploy/lab/up.sh

lab-down:
	$(Q)deploy/lab/down.sh

# The images build the daemons themselves; the compose file mounts build/certs (so BUILD=build).
compose-test:
	$(Q)BUILD=build deploy/compose/compose-test.sh

.PHONY: lab-test lab-up lab-down lab-clients compose-test
