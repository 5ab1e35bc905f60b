"""Kubernetes manifests (deploy/k8s/): they parse, and they reference only images, ports, config
files, ConfigMaps and Secrets that exist; the relay runs on host networking; every pod is probed
on /healthz. No cluster is needed."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

from deployutil import DEPLOY, ROLES, bound, bound_keyed, load_yaml, load_yaml_all, plan, port_table

K8S = os.path.join(DEPLOY, "k8s")
sys.path.insert(0, K8S)
import genconfigmaps  # noqa: E402  (deploy/k8s/genconfigmaps.py)


def manifests():
    out = []
    for f in sorted(os.listdir(K8S)):
        if f.endswith((".yaml", ".yml")):
            for d in load_yaml_all(os.path.join(K8S, f)):
                out.append((f, d))
    return out


def pod_spec(obj):
    if obj["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
        return obj["spec"]["template"]["spec"]
    return None


class K8sManifests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.docs = manifests()
        cls.by_kind = {}
        for f, d in cls.docs:
            cls.by_kind.setdefault(d["kind"], []).append(d)
        cls.table = port_table()

    def test_every_document_is_a_namespaced_object_of_the_suite(self):
        self.assertTrue(self.docs)
        for f, d in self.docs:
            with self.subTest(file=f, name=d.get("metadata", {}).get("name")):
                for k in ("apiVersion", "kind", "metadata"):
                    self.assertIn(k, d)
                if d["kind"] != "Namespace":
                    self.assertEqual(d["metadata"].get("namespace"), "edge-suite")

    def test_workloads_per_role(self):
        kinds = {d["metadata"]["name"]: d["kind"] for d in
                 self.by_kind.get("Deployment", []) + self.by_kind.get("DaemonSet", [])}
        self.assertEqual(kinds, {"director": "Deployment", "access-edge": "Deployment",
                                 "conf-edge": "Deployment", "revproxy": "Deployment",
                                 "av-edge": "DaemonSet"})
        av = pod_spec([d for d in self.by_kind["DaemonSet"] if d["metadata"]["name"] == "av-edge"][0])
        self.assertTrue(av.get("hostNetwork"), "the relay needs host networking")

    def test_images_are_the_role_dockerfiles(self):
        for kind in ("Deployment", "DaemonSet"):
            for d in self.by_kind.get(kind, []):
                spec = pod_spec(d)
                for c in spec.get("initContainers", []) + spec["containers"]:
                    m = re.fullmatch(r"edge-suite/([a-z-]+):[\w.]+", c["image"])
                    with self.subTest(workload=d["metadata"]["name"], image=c["image"]):
                        self.assertTrue(m, "images are named edge-suite/<role>:<version>")
                        self.assertTrue(os.path.exists(os.path.join(DEPLOY, "docker", m.group(1) + ".Dockerfile")))

    def cluster_config(self, role):
        cm = [c for c in self.by_kind["ConfigMap"] if c["metadata"]["name"] == f"edge-suite-{role}"][0]
        return cm["data"][f"{role}.yaml"]

    def test_container_ports_are_what_the_config_binds(self):
        ports_by_role = {}
        for kind in ("Deployment", "DaemonSet"):
            for d in self.by_kind.get(kind, []):
                role = d["metadata"]["name"]
                c = pod_spec(d)["containers"][0]
                named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
                ports_by_role[role] = named
                binds = {port for _, port in bound(role, self.cluster_config(role),
                                                   own={"0.0.0.0", "@NODE_IP@"})}
                with self.subTest(role=role):
                    self.assertEqual(set(named.values()), binds,
                                     "containerPorts differ from the ports the role's ConfigMap binds")
                    # Probes on /healthz on the admin port.
                    for probe in ("readinessProbe", "livenessProbe"):
                        g = c[probe]["httpGet"]
                        self.assertEqual(g["path"], "/healthz")
                        self.assertEqual(named.get(g["port"], g["port"]), 8080)
                    # The command runs the role's binary on the mounted config.
                    self.assertEqual(c["command"], [f"/usr/local/bin/{role}", "-c",
                                                    f"/etc/edge/config/{role}.yaml"])
        type(self).ports_by_role = ports_by_role

    def test_service_ports_reach_container_ports_and_external_ones_are_in_the_port_table(self):
        if not hasattr(self, "ports_by_role"):
            self.test_container_ports_are_what_the_config_binds()
        for s in self.by_kind["Service"]:
            sel = s["spec"].get("selector")
            if not sel:
                continue  # the web upstream: the user's own endpoints
            role = sel["app.kubernetes.io/name"]
            self.assertIn(role, self.ports_by_role, f"Service {s['metadata']['name']} selects nothing")
            for p in s["spec"]["ports"]:
                with self.subTest(service=s["metadata"]["name"], port=p["port"]):
                    target = p.get("targetPort", p["port"])
                    target = self.ports_by_role[role].get(target, target)
                    self.assertIn(target, self.ports_by_role[role].values(), "targetPort is no container port")
                    if s["spec"]["type"] == "LoadBalancer":
                        self.assertIn((p.get("protocol", "TCP").lower(), str(p["port"]), "external"),
                                      self.table[role], "an external port outside deploy/ports.txt")

    def test_configmaps_hold_the_role_configs(self):
        cms = {c["metadata"]["name"]: c for c in self.by_kind["ConfigMap"]}
        files = set(os.listdir(os.path.join(DEPLOY, "compose", "config")))
        if os.path.isdir(os.path.join(DEPLOY, "config")):
            files |= set(os.listdir(os.path.join(DEPLOY, "config")))
        for role in ROLES:
            cm = cms.get(f"edge-suite-{role}")
            self.assertIsNotNone(cm, f"no ConfigMap for {role}")
            for key in cm["data"]:
                self.assertIn(key, files, f"ConfigMap key {key} is no file in deploy/config or "
                                          "deploy/compose/config")
            self.assertEqual(list(cm["data"]), [f"{role}.yaml"])

    def test_configmaps_are_generated_from_the_compose_configs(self):
        with open(os.path.join(K8S, "configmaps.yaml")) as f:
            self.assertEqual(f.read(), genconfigmaps.render(),
                             "deploy/k8s/configmaps.yaml is out of date: run deploy/k8s/genconfigmaps.py")

    def test_configs_bind_no_address_twice_and_reach_services_that_exist(self):
        cluster_ips = {s["spec"].get("clusterIP") for s in self.by_kind["Service"]}
        for cm in self.by_kind["ConfigMap"]:
            for key, text in cm["data"].items():
                with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
                    f.write(text.replace("@NODE_IP@", "192.0.2.1"))  # as the init container does
                    f.flush()
                    cfg = load_yaml(f.name)
                addrs = bound_keyed(key[:-5], text, own={"0.0.0.0", "@NODE_IP@"})
                with self.subTest(config=key):
                    self.assertIsNotNone(cfg)
                    self.assertEqual(len(addrs), len(set(addrs)), f"{key} binds an address twice: {addrs}")
                    # Every internal next hop became the ClusterIP of a Service defined here.
                    for ip in re.findall(r"\b10\.96\.100\.\d+\b", text):
                        self.assertIn(ip, cluster_ips, f"{key} points at {ip}, which no Service has")
                    self.assertNotRegex(text, r"\b198\.1[89]\.", "a lab address left in a cluster config")

    def test_volumes_reference_configmaps_and_the_secret_that_exist(self):
        cms = {c["metadata"]["name"] for c in self.by_kind["ConfigMap"]}
        with open(os.path.join(K8S, "make-secret.sh")) as f:
            secret = re.search(r"name: (\S+?)\\n", f.read()).group(1)
        for kind in ("Deployment", "DaemonSet"):
            for d in self.by_kind.get(kind, []):
                spec = pod_spec(d)
                vols = {v["name"]: v for v in spec["volumes"]}
                for v in vols.values():
                    if "configMap" in v:
                        self.assertIn(v["configMap"]["name"], cms)
                    if "secret" in v:
                        self.assertEqual(v["secret"]["secretName"], secret)
                for c in spec.get("initContainers", []) + spec["containers"]:
                    for m in c.get("volumeMounts", []):
                        self.assertIn(m["name"], vols)
                    sc = c["securityContext"]
                    self.assertFalse(sc["allowPrivilegeEscalation"])
                    self.assertTrue(sc["readOnlyRootFilesystem"])
                    self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
                    self.assertLessEqual(set(sc["capabilities"].get("add", [])), {"NET_BIND_SERVICE"})

    def test_termination_grace_matches_the_drain(self):
        from test_deploy_files import drain_seconds
        for kind in ("Deployment", "DaemonSet"):
            for d in self.by_kind.get(kind, []):
                role = d["metadata"]["name"]
                g = pod_spec(d)["terminationGracePeriodSeconds"]
                drain = drain_seconds(role)
                with self.subTest(role=role):
                    self.assertTrue(drain < g <= drain + 10, f"grace {g}s vs drain {drain}s")

    def test_fixed_cluster_ips_follow_the_lab_plan(self):
        # genconfigmaps.py maps 198.19.10.X to 10.96.100.X; each internal Service must sit there.
        p = plan()
        want = {"director": p["DIRECTOR"], "access-edge-internal": p["ACCESS_INT"],
                "conf-edge-internal": p["CONF_INT"], "revproxy-internal": p["REVPROXY_INT"]}
        got = {s["metadata"]["name"]: s["spec"].get("clusterIP") for s in self.by_kind["Service"]}
        for name, lab in want.items():
            self.assertEqual(got.get(name), genconfigmaps.SERVICE_NET + lab.rsplit(".", 1)[1], name)

    def test_make_secret_carries_every_certificate_and_no_rogue(self):
        tmp = tempfile.mkdtemp()
        try:
            for n in ("ca.crt", "director.crt", "director.key", "rogue.crt"):
                with open(os.path.join(tmp, n), "w") as f:
                    f.write(n)
            r = subprocess.run([os.path.join(K8S, "make-secret.sh"), tmp], capture_output=True,
                               text=True, timeout=20)
            self.assertEqual(r.returncode, 0, r.stderr)
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
                f.write(r.stdout)
                f.flush()
                secret = load_yaml(f.name)
            self.assertEqual(secret["kind"], "Secret")
            self.assertEqual(sorted(secret["data"]), ["ca.crt", "director.crt", "director.key"])
        finally:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    unittest.main()
