"""Deployment files a user runs as they are: the per-role images (deploy/docker), the compose lab
(deploy/compose), the systemd units (deploy/systemd) and the config generator they share.
What is checked is what would break a user's `docker build`, `docker-compose up` or
`systemctl start`: a package the project does not name, a file that is not there, a port nobody
listens on, a unit systemd rejects. No Docker engine is needed."""
import http.server
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import unittest

from deployutil import (DEPLOY, ROLES, ROOT, bound, compose_config_text, default_config,
                        install_deps_packages, load_yaml, plan, port_table, which)

COMPOSE_DIR = os.path.join(DEPLOY, "compose")
COMPOSE = os.path.join(COMPOSE_DIR, "docker-compose.yml")
DOCKER_DIR = os.path.join(DEPLOY, "docker")
SYSTEMD_DIR = os.path.join(DEPLOY, "systemd")
LAB_LAN = ipaddress.ip_network("198.18.0.0/15")
# Runtimes only a SAN=1 test build links (gcc's libasan, libubsan, ...); images never do.
SANITIZER_RUNTIMES = ("libasan.", "libubsan.", "liblsan.", "libtsan.")

sys.path.insert(0, DEPLOY)
import genconf  # noqa: E402  (deploy/genconf.py)
import harness  # noqa: E402


def dockerfile_stages(path):
    """[(base image, [instruction lines])] of a Dockerfile, continuation lines joined."""
    with open(path) as f:
        text = re.sub(r"\\\n", " ", f.read())
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append((line.split()[1], []))
        elif stages:
            stages[-1][1].append(line)
    return stages


def apt_installs(instructions):
    """Package names of every `apt-get install` in RUN instructions."""
    pkgs = []
    for ins in instructions:
        if not ins.upper().startswith("RUN "):
            continue
        for cmd in re.split(r"&&|;|\|\|", ins[4:]):
            words = cmd.split()
            if len(words) >= 2 and words[0] == "apt-get" and "install" in words:
                pkgs += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return pkgs


class Dockerfiles(unittest.TestCase):
    def dockerfiles(self):
        files = sorted(f for f in os.listdir(DOCKER_DIR) if f.endswith(".Dockerfile"))
        self.assertTrue(files)
        return files

    def test_one_image_per_role(self):
        for role in ROLES:
            self.assertTrue(os.path.exists(os.path.join(DOCKER_DIR, role + ".Dockerfile")),
                            f"no image for {role}")

    def test_every_package_installed_is_named_in_install_deps(self):
        named = set().union(*install_deps_packages().values())
        for f in self.dockerfiles():
            for base, ins in dockerfile_stages(os.path.join(DOCKER_DIR, f)):
                for pkg in apt_installs(ins):
                    with self.subTest(dockerfile=f, package=pkg):
                        self.assertIn(pkg, named, f"{f} installs {pkg}, which deploy/install-deps.sh "
                                                  "does not name")

    def test_role_images_build_on_debian_with_the_build_group_and_run_slim(self):
        groups = install_deps_packages()
        for role in ROLES:
            stages = dockerfile_stages(os.path.join(DOCKER_DIR, role + ".Dockerfile"))
            with self.subTest(role=role):
                self.assertEqual([b for b, _ in stages], ["debian:12", "debian:12-slim"])
                build, run = stages[0][1], stages[1][1]
                self.assertIn("ENV EDGE_DEPS_GROUPS=build", build)
                self.assertTrue(any("deploy/install-deps.sh" in i for i in build if i.startswith("RUN")))
                self.assertEqual(apt_installs(build), [], "the build stage installs only through "
                                                          "deploy/install-deps.sh")
                self.assertTrue(any(f"make" in i and f"build/bin/{role}" in i for i in build))
                # Runtime: only shared libraries of the RUNTIME group.
                self.assertLessEqual(set(apt_installs(run)), groups["RUNTIME"])
                user = [i.split()[1] for i in run if i.startswith("USER ")]
                self.assertEqual(len(user), 1)
                self.assertNotIn(user[0], ("root", "0", "0:0"))
                hc = [i for i in run if i.startswith("HEALTHCHECK")]
                self.assertTrue(hc and "edge-healthcheck" in hc[0] and f"/etc/edge/{role}.yaml" in hc[0])
                self.assertIn(f'ENTRYPOINT ["/usr/local/bin/{role}", "-c", "/etc/edge/{role}.yaml"]', run)

    def test_each_image_installs_every_library_its_daemon_links(self):
        # Each shared library the built daemon needs directly (readelf NEEDED, found through
        # ldd) belongs to a Debian package its image's runtime stage installs (the Director's
        # image once lacked libcurl4 after ACME; only compose-test noticed).
        if not which("ldd") or not which("dpkg-query") or not which("readelf"):
            self.skipTest("ldd, readelf or dpkg-query missing")
        for role in ROLES:
            binary = os.path.join(harness.BUILD, "bin", role)
            installed = set(apt_installs(
                dockerfile_stages(os.path.join(DOCKER_DIR, role + ".Dockerfile"))[1][1]))
            needed = re.findall(r"\(NEEDED\).*\[(\S+)\]", subprocess.run(
                ["readelf", "-d", binary], capture_output=True, text=True, check=True).stdout)
            paths = dict(re.findall(r"^\s*(\S+) => (/\S+)", subprocess.run(
                ["ldd", binary], capture_output=True, text=True, check=True).stdout, re.M))
            for soname in needed:
                r = subprocess.run(["dpkg-query", "-S", os.path.realpath(paths[soname])],
                                   capture_output=True, text=True)
                pkg = r.stdout.split(":")[0].strip()
                if pkg in ("libc6", ""):
                    continue  # in every Debian image (or not from a package: says nothing)
                if soname.startswith(SANITIZER_RUNTIMES):
                    continue  # a SAN=1 test build; images never build with sanitizers
                with self.subTest(role=role, library=soname):
                    self.assertIn(pkg, installed, f"{role} links {soname} from {pkg}; "
                                  f"{role}.Dockerfile's runtime stage does not install it")

    def test_runtime_group_is_what_the_dev_packages_pull_in(self):
        # The RUNTIME names must be the Debian 12 packages behind the -dev packages we build with.
        if not which("apt-cache"):
            self.skipTest("apt-cache missing")
        groups = install_deps_packages()
        r = subprocess.run(["apt-cache", "depends", "--no-recommends", "--no-suggests"] +
                           sorted(p for p in groups["BUILD"] if p.endswith("-dev")),
                           capture_output=True, text=True, timeout=60)
        deps = set(re.findall(r"Depends: (\S+)", r.stdout))
        if not deps:
            print("\nskip: apt-cache knows no package lists yet (apt-get update)", flush=True)
            self.skipTest("apt-cache has no package lists (run apt-get update)")
        self.assertLessEqual(groups["RUNTIME"], deps)

    def test_copy_sources_exist(self):
        for f in self.dockerfiles():
            for base, ins in dockerfile_stages(os.path.join(DOCKER_DIR, f)):
                for i in ins:
                    if i.startswith("COPY ") and "--from=" not in i:
                        srcs = [w for w in i.split()[1:-1] if not w.startswith("--")]
                        for s in srcs:
                            with self.subTest(dockerfile=f, source=s):
                                self.assertTrue(os.path.exists(os.path.join(ROOT, s)))

    def test_build_images_script_makes_every_base_image_the_dockerfiles_use(self):
        # deploy/docker/build-images.sh imports the Debian bases itself (no Docker Hub); an image
        # on another base would not build with it.
        script = os.path.join(DOCKER_DIR, "build-images.sh")
        with open(script) as f:
            text = f.read()
        made = set(re.findall(r"(?:import .* - |tag \S+ )(debian:[\w.-]+)", text))
        self.assertIn("debian:12", made)
        for f in self.dockerfiles():
            for base, _ in dockerfile_stages(os.path.join(DOCKER_DIR, f)):
                with self.subTest(dockerfile=f, base=base):
                    self.assertIn(base, made)
        r = subprocess.run(["bash", "-n", script], capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_exposed_ports_are_in_the_port_table_and_cover_the_config(self):
        for role in ROLES:
            run = dockerfile_stages(os.path.join(DOCKER_DIR, role + ".Dockerfile"))[-1][1]
            exposed = {(p.split("/")[1], int(p.split("/")[0]))
                       for i in run if i.startswith("EXPOSE ") for p in i.split()[1:]}
            table = {(pr, int(p)) for pr, p, _ in port_table()[role] if "-" not in p}
            with self.subTest(role=role):
                self.assertLessEqual(exposed, table, "EXPOSE names a port outside deploy/ports.txt")
                listened = {p for _, p in bound(role, compose_config_text(role))}
                self.assertTrue(listened)
                self.assertLessEqual(listened, {p for _, p in exposed},
                                     f"{role} listens on ports its image does not EXPOSE")
                self.assertLessEqual(listened, {p for _, p in table},
                                     f"{role} listens on ports outside deploy/ports.txt")


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *a):
        pass


class _Server(http.server.HTTPServer):
    def handle_error(self, request, client_address):
        pass  # the health check hangs up after the status line: not an error


class HealthcheckScript(unittest.TestCase):
    """deploy/docker/healthcheck.sh against a real listener on loopback."""

    def setUp(self):
        self.srv = _Server(("127.0.0.1", 0), _Health)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.tmp = tempfile.mkdtemp()

    def tearDown(self):
        self.srv.shutdown()
        self.srv.server_close()
        shutil.rmtree(self.tmp)

    def check(self, config_text):
        p = os.path.join(self.tmp, "role.yaml")
        with open(p, "w") as f:
            f.write(config_text)
        return subprocess.run(["bash", os.path.join(DOCKER_DIR, "healthcheck.sh"), p],
                              capture_output=True, text=True, timeout=10).returncode

    def test_healthy_daemon_passes_in_both_config_forms(self):
        _Health.status = 200
        self.assertEqual(self.check(f"admin: {{listen: 127.0.0.1:{self.port}}}\n"), 0)
        self.assertEqual(self.check(f"log: {{}}\nadmin:\n  listen: 127.0.0.1:{self.port}  # x\n"), 0)

    def test_unhealthy_or_absent_daemon_fails(self):
        _Health.status = 503
        self.assertNotEqual(self.check(f"admin: {{listen: 127.0.0.1:{self.port}}}\n"), 0)
        self.srv.shutdown()
        self.srv.server_close()
        self.assertNotEqual(self.check(f"admin: {{listen: 127.0.0.1:{self.port}}}\n"), 0)
        self.srv = _Server(("127.0.0.1", 0), _Health)  # for tearDown
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.assertNotEqual(self.check("log: {}\n"), 0, "no admin address: unhealthy")


class Compose(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.doc = load_yaml(COMPOSE)
        cls.services = cls.doc["services"]
        cls.plan = plan()

    def test_docker_compose_config_validates(self):
        if not which("docker-compose"):
            print("\nskip: docker-compose is not installed (deploy/install-deps.sh, TEST group); "
                  "the structure is still checked by the other Compose tests", flush=True)
            self.skipTest("docker-compose not installed")
        for extra in ([], ["--profile", "host-relay"]):
            r = subprocess.run(["docker-compose", "-f", COMPOSE] + extra + ["config", "-q"],
                               capture_output=True, text=True, timeout=120, cwd=COMPOSE_DIR)
            self.assertEqual(r.returncode, 0, f"docker-compose {' '.join(extra)} config: {r.stderr}")

    def test_lab_services_and_three_networks(self):
        self.assertEqual(set(self.doc["networks"]), {"external", "perimeter", "internal"})
        for s in ROLES + ["web", "client", "firewall", "iuser"]:
            self.assertIn(s, self.services)
        for edge in ["access-edge", "conf-edge", "av-edge", "revproxy"]:
            self.assertEqual(set(self.services[edge]["networks"]), {"perimeter", "internal"}, edge)
        self.assertEqual(set(self.services["director"]["networks"]), {"internal"})
        self.assertEqual(set(self.services["web"]["networks"]), {"internal"})
        self.assertEqual(set(self.services["client"]["networks"]), {"external"})
        self.assertEqual(set(self.services["firewall"]["networks"]), {"external", "perimeter"})
        self.assertEqual(set(self.services["iuser"]["networks"]), {"internal"})
        self.assertTrue(self.doc["networks"]["internal"].get("internal"),
                        "the internal network must have no way out")
        self.assertEqual(self.services["av-edge-host"].get("network_mode"), "host")

    def test_addresses_follow_the_lab_plan(self):
        subnets = {n: ipaddress.ip_network(v["ipam"]["config"][0]["subnet"])
                   for n, v in self.doc["networks"].items()}
        for n, net in subnets.items():
            self.assertTrue(net.subnet_of(LAB_LAN), f"{n} {net} outside 198.18.0.0/15")
        p = self.plan
        want = {("director", "internal"): p["DIRECTOR"], ("web", "internal"): p["WEB"],
                ("access-edge", "perimeter"): p["ACCESS_EXT"], ("access-edge", "internal"): p["ACCESS_INT"],
                ("conf-edge", "perimeter"): p["CONF_EXT"], ("conf-edge", "internal"): p["CONF_INT"],
                ("av-edge", "perimeter"): p["AV1_EXT"], ("av-edge", "internal"): p["AV1_INT"],
                ("revproxy", "perimeter"): p["REVPROXY_EXT"], ("revproxy", "internal"): p["REVPROXY_INT"],
                ("firewall", "perimeter"): p["INET_PERIM"], ("iuser", "internal"): p["IUSER"]}
        for (svc, net), addr in want.items():
            self.assertEqual(self.services[svc]["networks"][net]["ipv4_address"], addr, f"{svc} on {net}")
        for svc, s in self.services.items():
            for net, v in (s.get("networks") or {}).items():
                a = ipaddress.ip_address(v["ipv4_address"])
                self.assertIn(a, subnets[net], f"{svc}: {a} not in {net}")

    def test_referenced_files_exist(self):
        for svc, s in self.services.items():
            b = s.get("build")
            if b:
                ctx = os.path.normpath(os.path.join(COMPOSE_DIR, b["context"]))
                self.assertTrue(os.path.exists(os.path.join(ctx, b["dockerfile"])), f"{svc} dockerfile")
            for v in s.get("volumes", []):
                src = v.split(":")[0]
                if src in self.doc.get("volumes", {}):
                    continue  # a named volume the engine makes, not a file of ours
                path = os.path.normpath(os.path.join(COMPOSE_DIR, src))
                certs = os.path.join(ROOT, "build", "certs")
                if path == certs or path.startswith(certs + os.sep):
                    # Made by deploy/certs.sh build/certs (the compose file's first step).
                    with open(os.path.join(DEPLOY, "certs.sh")) as f:
                        self.assertIn("DIR=${1:-build/certs}", f.read())
                    continue
                with self.subTest(service=svc, volume=src):
                    self.assertTrue(os.path.exists(path), f"{src} does not exist")

    def test_roles_run_non_root_read_only_with_a_healthcheck_the_lab_waits_on(self):
        """make compose-test waits on every HEALTHCHECK and checks these at run time too."""
        for role in ROLES:
            with self.subTest(role=role):
                s = self.services[role]
                self.assertTrue(s.get("read_only"), "read-only root file system")
                self.assertEqual(s.get("cap_drop"), ["ALL"])
                self.assertNotIn("user", s)  # the image's USER (non-root) applies
                stages = dockerfile_stages(os.path.join(DOCKER_DIR, f"{role}.Dockerfile"))
                final = stages[-1][1]
                users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
                self.assertTrue(users and users[-1] not in ("root", "0"), f"USER of the image: {users}")
                self.assertTrue(any(i.upper().startswith("HEALTHCHECK ") for i in final), "no HEALTHCHECK")
        for svc in ("firewall", "client"):  # the lab waits on these too before the flows start
            self.assertIn("healthcheck", self.services[svc], svc)

    def test_stop_grace_period_matches_the_drain(self):
        for role in ROLES:
            g = self.services[role].get("stop_grace_period")
            with self.subTest(role=role):
                self.assertIsNotNone(g)
                stop = int(g.rstrip("s"))
                drain = drain_seconds(role)
                self.assertTrue(drain < stop <= drain + 10, f"stop_grace_period {g} vs drain {drain}s")

    def test_each_role_gets_its_own_config_file(self):
        for role in ROLES:
            vols = self.services[role]["volumes"]
            self.assertIn(f"./config/{role}.yaml:/etc/edge/{role}.yaml:ro", vols)

    def test_configs_are_generated_from_the_current_defaults(self):
        p = self.plan
        hosts = {"director": "director", "access-edge": "access", "conf-edge": "conf",
                 "av-edge": "av1", "revproxy": "revproxy"}
        for role in ROLES:
            path = os.path.join(COMPOSE_DIR, "config", role + ".yaml")
            with open(path) as f:
                text = f.read()
            with self.subTest(role=role):
                cfg = load_yaml(path)
                self.assertIn("admin", cfg)
                self.assertNotRegex(text, r"(?<![\d.])127\.0\.0\.(1\d|2\d)\b",
                                    "a loopback-plan address left in a lab config")
                src = default_config(role)
                if not src:
                    self.assertIn("Stub written by deploy/compose/genconfigs.sh", text)
                    continue
                with open(src) as f:
                    want = genconf.rewrite(f.read(), p, hosts[role], "/etc/edge/certs",
                                           state="/var/lib/edge")
                self.assertEqual(text.split("\n", 1)[1], want,
                                 f"deploy/compose/config/{role}.yaml is out of date with {src}: "
                                 "run deploy/compose/genconfigs.sh")


def drain_seconds(role):
    """drain_timeout of the role's default config (the daemon's default, 30s, if unset)."""
    conf = default_config(role)
    d = str(load_yaml(conf).get("drain_timeout", "30s")) if conf else "30s"
    m = re.fullmatch(r"(\d+)(ms|s|m)?", d)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]


class GenConf(unittest.TestCase):
    def test_loopback_plan_becomes_lab_plan(self):
        p = plan()
        src = ("instance_id: x\nadmin: {listen: 127.0.0.24:8080}\nup: 127.0.0.24:443\n"
               "d: {address: 127.0.0.10:7400}\nz: 127.0.0.100:1\nav: [127.0.0.13:3478, 127.0.0.23:3478]\n"
               "tls: {cert: build/certs/av-edge.crt}\n")
        out = genconf.rewrite(src, p, "av2", "/etc/edge/certs", "av-edge-2")
        self.assertIn("instance_id: av-edge-2\n", out)
        self.assertIn(f"admin: {{listen: {p['REVPROXY_INT']}:8080}}", out)
        self.assertIn(f"up: {p['WEB']}:443", out)
        self.assertIn(f"address: {p['DIRECTOR']}:7400", out)
        self.assertIn("z: 127.0.0.100:1", out, "127.0.0.100 is not 127.0.0.10")
        self.assertIn(f"av: [{p['AV2_EXT']}:3478, {p['AV2_INT']}:3478]", out)
        self.assertIn("cert: /etc/edge/certs/av-edge.crt", out)


class SystemdUnits(unittest.TestCase):
    def unit(self, role):
        return os.path.join(SYSTEMD_DIR, f"edge-suite-{role}.service")

    def settings(self, role):
        out = {}
        with open(self.unit(role)) as f:
            for line in f:
                line = line.strip()
                if "=" in line and not line.startswith(("#", "[")):
                    k, v = line.split("=", 1)
                    out.setdefault(k, []).append(v)
        return out

    def test_units_pass_systemd_analyze_verify(self):
        if not which("systemd-analyze"):
            print("\nskip: systemd-analyze missing (package systemd)", flush=True)
            self.skipTest("systemd-analyze missing")
        tmp = tempfile.mkdtemp()
        try:
            paths = []
            for role in ROLES:
                # The units name /usr/local/bin/<role>; verify checks the file is executable, so
                # point them at the built binary, or a stand-in before the role is built.
                exe = os.path.join(ROOT, "build", "bin", role)
                if not os.access(exe, os.X_OK):
                    exe = os.path.join(tmp, role)
                    shutil.copy("/bin/true", exe)
                with open(self.unit(role)) as f:
                    text = f.read().replace(f"/usr/local/bin/{role}", exe)
                p = os.path.join(tmp, os.path.basename(self.unit(role)))
                with open(p, "w") as f:
                    f.write(text)
                paths.append(p)
            r = subprocess.run(["systemd-analyze", "verify", "--man=no"] + paths,
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stderr.strip() + r.stdout.strip(), "", "systemd complains")
            for p in paths:
                r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=30",  # 0..100 scale: 3.0
                                    "--no-pager", p], capture_output=True, text=True, timeout=60)
                level = re.findall(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
                self.assertEqual(r.returncode, 0, f"{os.path.basename(p)} exposure {level} over 3.0")
        finally:
            shutil.rmtree(tmp)

    def test_hardening_reload_and_drain(self):
        for role in ROLES:
            s = self.settings(role)
            with self.subTest(role=role):
                self.assertEqual(s["ExecStart"], [f"/usr/local/bin/{role} -c /etc/edge/{role}.yaml"])
                self.assertEqual(s["ExecReload"], ["/bin/kill -HUP $MAINPID"])
                self.assertEqual(s["KillSignal"], ["SIGTERM"])
                for k, v in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                             ("PrivateTmp", "yes"), ("ProtectHome", "yes"), ("User", "edge-suite")]:
                    self.assertEqual(s[k], [v], k)
                self.assertIn("RestrictAddressFamilies", s)
                caps = "" if role == "director" else "CAP_NET_BIND_SERVICE"
                self.assertEqual(s["CapabilityBoundingSet"], [caps])
                self.assertEqual(s["AmbientCapabilities"], [caps])
                # The stop timeout outlasts the drain, by a margin of at most 10 s.
                stop = int(s["TimeoutStopSec"][0].rstrip("s"))
                drain = drain_seconds(role)
                self.assertTrue(drain < stop <= drain + 10,
                                f"TimeoutStopSec {stop}s does not match drain_timeout {drain}s")


if __name__ == "__main__":
    unittest.main()
