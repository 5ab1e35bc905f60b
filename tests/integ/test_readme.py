"""The README's configuration reference is what the built daemons accept (--help key tables)."""
import subprocess

from harness import BUILD, ROOT, SuiteTest, have_binary


class Readme(SuiteTest):
    def test_configuration_reference_matches_the_daemons(self):
        if not have_binary("director"):
            self.skipTest("no daemon is built")
        p = subprocess.run(["deploy/config-reference.sh", "--check", BUILD], cwd=ROOT,
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
