"""Helpers for the deployment-file tests: YAML loading, the port table, the lab plan, the
Debian packages deploy/install-deps.sh names, and the listen addresses in a config."""
import json
import os
import re
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
ROLES = ["director", "access-edge", "conf-edge", "av-edge", "revproxy"]

try:
    import yaml  # python3-yaml (deploy/install-deps.sh), or PyYAML in the interpreter running us
except ImportError:  # e.g. a pyenv interpreter without PyYAML: use Debian's python3 + python3-yaml
    yaml = None


def load_yaml_all(path):
    """Every document in a YAML file, as Python values (None documents dropped)."""
    if yaml is not None:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    py = "/usr/bin/python3"
    if not os.access(py, os.X_OK):
        raise RuntimeError("no YAML parser: install python3-yaml (deploy/install-deps.sh)")
    code = ("import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1]))"
            " if d is not None], default=str))")
    r = subprocess.run([py, "-c", code, path], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise ValueError(f"{path}: {r.stderr.strip()}")
    return json.loads(r.stdout)


def load_yaml(path):
    docs = load_yaml_all(path)
    return docs[0] if docs else None


def plan():
    """deploy/lab/plan.env as a dict."""
    out = {}
    with open(os.path.join(DEPLOY, "lab", "plan.env")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "=" in line:
                k, v = line.split("=", 1)
                out[k] = v
    return out


def port_table():
    """deploy/ports.txt: {role: {(proto, port_or_range, side)}}."""
    table = {}
    with open(os.path.join(DEPLOY, "ports.txt")) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            role, side, proto, port = line.split()[:4]
            table.setdefault(role, set()).add((proto, port, side))
    return table


def role_ports(role, proto=None):
    """Single ports (ints) of a role in the port table, optionally of one protocol."""
    return {int(p) for pr, p, _ in port_table().get(role, ()) if "-" not in p and
            (proto is None or pr == proto)}


def install_deps_packages():
    """Every package named in deploy/install-deps.sh, by group: {"BUILD": {...}, ...}."""
    with open(os.path.join(DEPLOY, "install-deps.sh")) as f:
        text = f.read()
    groups = {}
    for m in re.finditer(r'^([A-Z]+)="([^"]*)"', text, re.M):
        if m.group(1) != "PKGS":
            groups[m.group(1)] = set(m.group(2).split())
    return groups


def listen_addresses(cfg):
    """Every value of a `listen` key anywhere in a parsed config (a string or a list)."""
    out = []
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            if k == "listen":
                out.extend(v if isinstance(v, list) else [v])
            else:
                out.extend(listen_addresses(v))
    elif isinstance(cfg, list):
        for v in cfg:
            out.extend(listen_addresses(v))
    return [str(a) for a in out]


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def default_config(role):
    p = os.path.join(DEPLOY, "config", role + ".yaml")
    return p if os.path.exists(p) else None


def which(tool):
    return shutil.which(tool)
