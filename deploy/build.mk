# Deployment targets.
#   make lab-test   the network-namespace lab (deploy/lab/): builds it, runs the lab tests in it,
#                   tears it down (root; the tests skip with the reason printed otherwise)
#   make lab-up / make lab-down   the lab by hand, with every built daemon started in it
#   make compose-test   the docker-compose lab end to end (deploy/compose/compose-test.sh, root):
#                   a private Docker engine, every image built from the Debian mirror, the lab up,
#                   the flows from the external client, everything torn down; not part of make test

lab-test: all
	$(Q)python3 tests/run_tests.py --build $(BUILD) --only integ -k test_lab_

lab-up: all
	$(Q)EDGELAB_BUILD=$(abspath $(BUILD)) deploy/lab/up.sh

lab-down:
	$(Q)deploy/lab/down.sh

# The images build the daemons themselves; the compose file mounts build/certs (so BUILD=build).
compose-test:
	$(Q)BUILD=build deploy/compose/compose-test.sh

.PHONY: lab-test lab-up lab-down compose-test
