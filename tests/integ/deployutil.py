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


# A role's own addresses in the lab plan (deploy/lab/plan.env keys): what it binds. Configs for
# the labs (deploy/compose/config) are written with these, so "what does this role listen on"
# is every host:port of its own addresses, whatever the key is called (listen, udp, mtls, ...).
OWN_KEYS = {"director": ["DIRECTOR"], "access-edge": ["ACCESS_EXT", "ACCESS_INT"],
            "conf-edge": ["CONF_EXT", "CONF_INT"], "av-edge": ["AV1_EXT", "AV1_INT"],
            "revproxy": ["REVPROXY_EXT", "REVPROXY_INT"]}
HOSTPORT = re.compile(r"(?<![\w.@])(\d{1,3}(?:\.\d{1,3}){3}|@NODE_IP@):(\d{1,5})(?![\d])")
KEYED = re.compile(r"(?:^|[\s{,])([A-Za-z_]+):\s*\[?\s*\{?\s*(?:address:\s*)?"
                   r"((?:\d{1,3}(?:\.\d{1,3}){3}|@NODE_IP@):\d{1,5})")


def strip_comments(text):
    return "\n".join(re.sub(r"(^|\s)#.*$", "", l) for l in text.splitlines())


def bound(role, text, own=None):
    """[(address, port)] a config binds: host:port pairs on the role's own addresses (lab plan),
    or on `own` (e.g. {"0.0.0.0", "@NODE_IP@"} for the cluster configs)."""
    if own is None:
        p = plan()
        own = {p[k] for k in OWN_KEYS[role]}
    return [(a, int(port)) for a, port in HOSTPORT.findall(strip_comments(text)) if a in own]


def bound_keyed(role, text, own):
    """[(key, address, port)]: like bound(), with the YAML key each address is listed under
    (udp, tcp, listen, ...), so one port bound for UDP and for TCP is not a double bind."""
    out = []
    for key, hp in KEYED.findall(strip_comments(text)):
        a, port = hp.rsplit(":", 1)
        if a in own:
            out.append((key, a, int(port)))
    return out


def compose_config_text(role):
    with open(os.path.join(DEPLOY, "compose", "config", role + ".yaml")) as f:
        return f.read()


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def default_config(role):
    p = os.path.join(DEPLOY, "config", role + ".yaml")
    return p if os.path.exists(p) else None


def which(tool):
    return shutil.which(tool)
