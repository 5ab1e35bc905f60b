# Deployment targets.
#   make lab-test   the network-namespace lab (deploy/lab/): builds it, runs the lab tests in it,
#                   tears it down (root; the tests skip with the reason printed otherwise)
#   make lab-up / make lab-down   the lab by hand, with every built daemon started in it

lab-test: all
	$(Q)python3 tests/run_tests.py --build $(BUILD) --only integ -k test_lab_

lab-up: all
	$(Q)EDGELAB_BUILD=$(abspath $(BUILD)) deploy/lab/up.sh

lab-down:
	$(Q)deploy/lab/down.sh

.PHONY: lab-test lab-up lab-down
