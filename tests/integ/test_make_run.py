"""`make run` (deploy/run.sh): the whole suite on the lab addresses with the default configs;
every built edge registers with the Director within 2 s (GET /edges), and Ctrl-C stops all."""
import json
import os
import signal
import socket
import subprocess
import time

from harness import BUILD, ROOT, SuiteTest, have_binary, http_request, wait_for

EDGES = {"access-edge": "access-edge", "conf-edge": "conf-edge", "av-edge": "av-edge",
         "revproxy": "revproxy"}
DIRECTOR_ADMIN = "127.0.0.10:8080"


def port_busy(host, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemons do: TIME_WAIT is not busy
    try:
        s.bind((host, port))
        return False
    except OSError:
        return True
    finally:
        s.close()


class MakeRun(SuiteTest):
    def test_suite_comes_up_edges_register_and_ctrl_c_stops_all(self):
        if not have_binary("director"):
            self.skipTest("director is not built")
        if os.geteuid() != 0:
            self.skipTest("the lab plan binds ports below 1024 (443, 80): run as root")
        if port_busy("127.0.0.10", 7400) or port_busy("127.0.0.10", 8080):
            self.skipTest("the lab addresses are in use (is `make run` already running?)")
        built = [e for e in EDGES if have_binary(e)]
        log = open(os.path.join(self.tmp, "run.log"), "w+")
        proc = subprocess.Popen(["deploy/run.sh", BUILD], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: http_request(DIRECTOR_ADMIN, "/healthz")[0] == 200, timeout=15,
                     what="the Director's /healthz")
            # run.sh starts the edges one after another; each must be registered within 2 s
            # of answering its own /healthz, so poll until all are up, then time the rest.

            def registered():
                st, text = http_request(DIRECTOR_ADMIN, "/edges")
                roles = {e["role"] for e in json.loads(text)["edges"]}
                return set(built) <= roles and roles

            roles = wait_for(registered, timeout=20 + 2 * len(built),
                             what=f"{built} in GET /edges")
            self.assertLessEqual(set(built), roles)
            def all_up():
                log.seek(0)
                out = log.read()
                return all(f"run: {e} up" in out for e in built)

            wait_for(all_up, timeout=10, what="run.sh to report every edge up")
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.seek(0)
        out = log.read()
        self.assertIn("run: stopping", out)
        self.assertNotIn("AddressSanitizer", out)
        # Nothing is left listening on the lab addresses.
        wait_for(lambda: not port_busy("127.0.0.10", 7400), timeout=5, what="the ctl port to close")
