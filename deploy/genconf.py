#!/usr/bin/env python3
"""Derives a role's config for the namespace lab or the compose lab from its default config
(deploy/config/<role>.yaml, written for the loopback plan): each 127.0.0.x address of the
loopback plan becomes that host's address in deploy/lab/plan.env, and build/certs/ becomes the
given certificate directory, and a relay's `internal_networks` gains the lab's internal network.
Everything else is kept as written, so the derived configs follow the defaults as the roles
change them.

Usage: deploy/genconf.py --host HOST [--certs DIR] [--instance ID] [--state DIR] DEFAULT_CONFIG > OUT
HOST is a lab host: director, access, conf, av1, av2, av3, revproxy (the av number picks which
av-edge's addresses 127.0.0.13/127.0.0.23 become)."""
import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def load_plan(path=os.path.join(HERE, "lab", "plan.env")):
    plan = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "=" in line:
                k, v = line.split("=", 1)
                plan[k.strip()] = v.strip()
    return plan


def address_map(plan, host):
    """Loopback-plan address (or address:port) -> lab address, for a config read on HOST."""
    av = host if re.fullmatch(r"av[123]", host) else "av1"
    m = {
        "127.0.0.10": plan["DIRECTOR"],
        "127.0.0.11": plan["ACCESS_EXT"],
        "127.0.0.21": plan["ACCESS_INT"],
        "127.0.0.12": plan["CONF_EXT"],
        "127.0.0.22": plan["CONF_INT"],
        "127.0.0.13": plan[av.upper() + "_EXT"],
        "127.0.0.23": plan[av.upper() + "_INT"],
        "127.0.0.14": plan["REVPROXY_EXT"],
        # 127.0.0.24 is two things in the loopback plan: the revproxy's admin listener (8080) and
        # the internal web server it forwards to. In the lab they are two hosts.
        "127.0.0.24:8080": plan["REVPROXY_INT"] + ":8080",
        "127.0.0.24": plan["WEB"],
    }
    return m


ADDR = re.compile(r"(?<![\d.])127\.0\.0\.(\d{1,3})(:\d+)?(?![\d])")


def rewrite(text, plan, host, certs=None, instance=None, state=None):
    m = address_map(plan, host)

    def sub(mo):
        a = "127.0.0." + mo.group(1)
        port = mo.group(2) or ""
        if a + port in m:
            return m[a + port]
        if a in m:
            return m[a] + port
        return mo.group(0)

    out = ADDR.sub(sub, text)
    # The lab's internal network is not private address space, so a relay's list of internal
    # networks (peers an external allocation may not reach) must name it, or an external client
    # could relay into the inside.
    lan = ".".join(plan["DIRECTOR"].split(".")[:3]) + ".0/24"
    out = re.sub(r"(?m)^(\s*internal_networks:\s*\[)", lambda mo: mo.group(1) + lan + ", ", out)
    out = re.sub(r"(?m)^(\s*)internal_networks:\s*(#.*)?\n(\s*)- ",
                 lambda mo: f"{mo.group(1)}internal_networks:\n{mo.group(3)}- {lan}\n{mo.group(3)}- ", out)
    if certs:
        out = out.replace("build/certs/", certs.rstrip("/") + "/")
    if state:  # where state files go (containers: a volume; the netns lab: its own folder)
        out = out.replace("build/director-registrations", state.rstrip("/") + "/director-registrations")
        # ACME: the Director's account key and each edge's certificate pair, written at run time.
        out = out.replace("build/acme-account.key", state.rstrip("/") + "/acme-account.key")
        out = out.replace("build/acme/", state.rstrip("/") + "/acme/")
    if instance:
        out, n = re.subn(r"(?m)^instance_id:.*$", f"instance_id: {instance}", out)
        if n == 0:
            out = f"instance_id: {instance}\n" + out
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True,
                    choices=["director", "access", "conf", "av1", "av2", "av3", "revproxy"])
    ap.add_argument("--certs")
    ap.add_argument("--instance")
    ap.add_argument("--state", help="folder for state files (the Director's sip.store)")
    ap.add_argument("config")
    a = ap.parse_args()
    with open(a.config) as f:
        text = f.read()
    sys.stdout.write(rewrite(text, load_plan(), a.host, a.certs, a.instance, a.state))


if __name__ == "__main__":
    main()
