#!/usr/bin/env python3
"""Runs the unit tests (cmocka binaries in BUILD/tests) and the integration tests
(tests/integ/test_*.py, unittest) and ends with one line: "N passed, N failed"."""
import argparse
import os
import re
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_units(build, pattern):
    passed = failed = 0
    tdir = os.path.join(build, "tests")
    if not os.path.isdir(tdir):
        return 0, 0
    for name in sorted(os.listdir(tdir)):
        path = os.path.join(tdir, name)
        if not os.access(path, os.X_OK) or (pattern and pattern not in name):
            continue
        if not os.path.exists(os.path.join(ROOT, "tests", "unit", name + ".c")):
            continue  # left in the build from a test that has moved or gone
        t0 = time.time()
        try:
            p = subprocess.run([path], capture_output=True, text=True, timeout=300, cwd=ROOT)
            out = p.stdout + p.stderr
            rc = p.returncode
        except subprocess.TimeoutExpired as e:
            out, rc = (e.stdout or b"").decode(errors="replace") + "\nTIMEOUT", -1
        ok = sum(int(n) for n in re.findall(r"\[  PASSED  \] (\d+) test", out))
        bad = sum(int(n) for n in re.findall(r"\[  FAILED  \] (\d+) test", out))
        if rc != 0 and bad == 0:
            bad = 1  # crashed or failed before cmocka could count
        passed += ok
        failed += bad
        status = "ok" if bad == 0 else "FAIL"
        print(f"unit  {name}: {ok} passed, {bad} failed ({time.time() - t0:.1f}s) {status}")
        if bad:
            print("\n".join("    " + l for l in out.splitlines()[-40:]))
    return passed, failed


class CountingResult(unittest.TextTestResult):
    pass


def run_integ(build, pattern):
    os.environ["SUITE_BUILD"] = os.path.abspath(build)
    sys.path.insert(0, os.path.join(HERE, "integ"))
    loader = unittest.TestLoader()
    if pattern:
        loader.testNamePatterns = [f"*{pattern}*"]
    suite = loader.discover(os.path.join(HERE, "integ"), pattern="test_*.py",
                            top_level_dir=os.path.join(HERE, "integ"))
    runner = unittest.TextTestRunner(verbosity=2, stream=sys.stdout, resultclass=CountingResult)
    res = runner.run(suite)
    failed = len(res.failures) + len(res.errors) + len(res.unexpectedSuccesses)
    passed = res.testsRun - failed - len(res.skipped)
    return passed, failed, len(res.skipped)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--only", choices=["unit", "integ"])
    ap.add_argument("-k", dest="pattern", default="")
    a = ap.parse_args()
    up = uf = ip = ifl = isk = 0
    if a.only in (None, "unit"):
        up, uf = run_units(a.build, a.pattern if a.only == "unit" else "")
    if a.only in (None, "integ"):
        ip, ifl, isk = run_integ(a.build, a.pattern)
    passed, failed = up + ip, uf + ifl
    print(f"unit: {up} passed, {uf} failed; integration: {ip} passed, {ifl} failed, {isk} skipped")
    line = f"{passed} passed, {failed} failed"
    if isk:
        line += f", {isk} skipped"
    print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
