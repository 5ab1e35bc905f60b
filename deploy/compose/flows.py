#!/usr/bin/env python3
"""The compose lab's end-to-end flows, run by deploy/compose/compose-test.sh against a lab that is
up (DOCKER_HOST and COMPOSE_PROJECT_NAME set). Everything a user would do is done from inside the
lab's containers with `docker exec`: the external client (198.18.0.100, on the external network,
its route to the perimeter through the firewall container) and an internal user (iuser, on the
internal network: the internal service that asks the Director for credentials and keys).

  flows.py wait-healthy   waits (bounded) until every container runs and every HEALTHCHECK says
                          healthy; fails at once on one that exits or turns unhealthy
  flows.py run [NAME...]  the flows (or the ones named); one line per flow; exit 1 if any failed

The flows: the roles' containers are hardened (non-root, read-only root, healthy); REGISTER and
MESSAGE through access-edge (both ways); a TURN relay with REST credentials from the Director and
0 loss (and none into the internal network); a conference through conf-edge with keys from the
Director; the address book through revproxy; and no way from the external network to any internal
address, through the firewall or the Docker host, while the internal listeners answer inside."""
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integ"))
from test_lab_topology import CLIENT, CONF_CLIENT, PLAN  # noqa: E402  (the lab tests' own clients)

DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
COMPOSE = ["docker-compose", "-f", os.path.join(HERE, "docker-compose.yml")]
ROLES = ["director", "access-edge", "conf-edge", "av-edge", "revproxy"]
SIPUA = "/opt/edge-lab/sipua.py"   # deploy/lab/sipua.py, mounted into client and iuser
CA = "/etc/edge/ca.crt"            # the lab CA, mounted into client and iuser
CLIENT_ADDR = "198.18.0.100"
FIREWALL_EXT = "198.18.0.1"
FIREWALL_PERIM = "198.18.10.1"
DIRECTOR_ADMIN = f"http://{PLAN['DIRECTOR']}:8080"


def sh(args, timeout=60, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


_ids = {}


def cid(service):
    """The container id of a compose service."""
    if service not in _ids:
        r = sh(COMPOSE + ["ps", "-q", service])
        _ids[service] = r.stdout.strip()
        if not _ids[service]:
            raise Fail(f"no container for service {service}: {r.stderr.strip()}")
    return _ids[service]


def ex(service, *args, timeout=60):
    """Runs a command in a service's container; (rc, stdout+stderr)."""
    r = sh([DOCKER, "exec", cid(service)] + list(args), timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def spawn(service, *args):
    return subprocess.Popen([DOCKER, "exec", "-i", cid(service)] + list(args), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def logs(service, n=30):
    r = sh([DOCKER, "logs", "--tail", str(n), cid(service)])
    return r.stdout + r.stderr


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def inspect(service):
    return json.loads(sh([DOCKER, "inspect", cid(service)]).stdout)[0]


def wait_healthy(limit=240):
    services = sh(COMPOSE + ["config", "--services"]).stdout.split()
    end = time.time() + limit
    while True:
        pending = []
        for s in services:
            if not sh(COMPOSE + ["ps", "-q", s]).stdout.strip():
                continue  # a profile's service (av-edge-host) that is not started
            st = inspect(s)["State"]
            health = (st.get("Health") or {}).get("Status")
            if st["Status"] != "running" or health == "unhealthy":
                raise Fail(f"{s} is {st['Status']}{'/' + health if health else ''} "
                           f"(exit code {st.get('ExitCode')}):\n{logs(s)}")
            if health not in (None, "healthy"):
                pending.append(f"{s} {health}")
        if not pending:
            print(f"flows: every container runs, every HEALTHCHECK healthy ({', '.join(services)})")
            return
        if time.time() > end:
            raise Fail("not healthy after %d s: %s" % (limit, ", ".join(pending)))
        time.sleep(2)


# ---- the flows -----------------------------------------------------------------------------

def flow_hardening():
    """Each role runs as a non-root user with a read-only root file system and a HEALTHCHECK."""
    for role in ROLES:
        i = inspect(role)
        check(i["Config"].get("Healthcheck"), f"{role}: no HEALTHCHECK")
        check(i["State"].get("Health", {}).get("Status") == "healthy", f"{role}: not healthy")
        check(i["HostConfig"].get("ReadonlyRootfs"), f"{role}: root file system is writable")
        rc, out = ex(role, "cat", "/proc/1/status")
        uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)", out, re.M)
        check(rc == 0 and uid and uid.group(1) != "0" and uid.group(2) != "0",
              f"{role}: its process runs as root or is unknown: {out[:300]}")
        rc, out = ex(role, "sh", "-c", "touch /usr/local/bin/x")
        check(rc != 0, f"{role}: could write to its root file system")
    return "5 roles: uid 10001, read-only root, healthy"


def probe(service, targets, timeout=3):
    rc, out = ex(service, "python3", "-c", CLIENT, "tcp", str(timeout), *targets, timeout=30)
    res = {}
    for line in out.splitlines():
        t, _, what = line.partition(" ")
        res[t] = what
    check(set(res) >= set(targets), f"probe from {service} did not finish: {out}")
    return res


EDGE_PORTS = [f"{PLAN['ACCESS_EXT']}:5061", f"{PLAN['ACCESS_EXT']}:443", f"{PLAN['CONF_EXT']}:443",
              f"{PLAN['AV1_EXT']}:3478", f"{PLAN['AV1_EXT']}:443", f"{PLAN['REVPROXY_EXT']}:443"]
INTERNAL = [f"{PLAN['DIRECTOR']}:7400", f"{PLAN['DIRECTOR']}:8080", f"{PLAN['DIRECTOR']}:5061",
            f"{PLAN['ACCESS_INT']}:5061", f"{PLAN['ACCESS_INT']}:8080", f"{PLAN['CONF_INT']}:8057",
            f"{PLAN['CONF_INT']}:8080", f"{PLAN['AV1_INT']}:3478", f"{PLAN['AV1_INT']}:8080",
            f"{PLAN['REVPROXY_INT']}:8080", f"{PLAN['WEB']}:443"]
# Listening on the perimeter side, but not in the port table (deploy/lab/perimeter.nft).
OFF_TABLE = [f"{PLAN['CONF_EXT']}:8057"]


def flow_perimeter():
    """The external client reaches the edges' table ports; no internal address, neither through
    the Docker host (its default route) nor through the firewall (a route it adds itself)."""
    res = probe("client", EDGE_PORTS)
    bad = {t: r for t, r in res.items() if r != "connected"}
    check(not bad, f"external client cannot reach edge ports: {bad}")
    res = probe("iuser", INTERNAL)
    bad = {t: r for t, r in res.items() if r != "connected"}
    check(not bad, f"internal listeners do not answer inside (the check below would mean nothing): {bad}")
    leaks = {}
    for how in ("the Docker host", "the firewall"):
        if how == "the firewall":
            rc, out = ex("client", "ip", "route", "replace", "198.19.0.0/16", "via", FIREWALL_EXT)
            check(rc == 0, f"client: ip route: {out}")
        res = probe("client", INTERNAL)
        leaks.update({f"{t} via {how}": r for t, r in res.items() if r == "connected"})
    # A UDP REGISTER straight to the Director gets no answer at all.
    rc, out = ex("client", "python3", SIPUA, "--proxy", PLAN["DIRECTOR"], "--user", "alice", "--password",
                 "alice-secret", "--domain", "example.com", "--local", CLIENT_ADDR, "--timeout", "3", timeout=30)
    if re.search(r"^REGISTER \d", out, re.M):
        leaks[f"{PLAN['DIRECTOR']}:5060/udp"] = out.strip()
    ex("client", "ip", "route", "del", "198.19.0.0/16")
    check(not leaks, f"the external network reaches internal addresses: {leaks}")
    return f"{len(EDGE_PORTS)} edge ports open; {len(INTERNAL)} internal listeners closed from outside"


def sipua(service, *args):
    return spawn(service, "python3", SIPUA, "--timeout", "10", *args)


def read_until(p, prefix, timeout=15):
    """Reads p's lines (kept in p.seen) until one starts with prefix; '' at EOF or timeout."""
    import select
    end = time.time() + timeout
    p.seen = getattr(p, "seen", "")
    while time.time() < end:
        ready, _, _ = select.select([p.stdout], [], [], max(0.0, end - time.time()))
        if not ready:
            break
        line = p.stdout.readline()
        if not line:
            break
        p.seen += line
        if line.startswith(prefix):
            return line
    return ""


def finish(p, timeout=30):
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return getattr(p, "seen", "") + out


def flow_sip():
    """REGISTER (Digest from the Director) and MESSAGE through access-edge, both ways."""
    out_args = ["--proxy", PLAN["ACCESS_EXT"], "--user", "alice", "--password", "alice-secret",
                "--domain", "example.com", "--local", CLIENT_ADDR]
    in_args = ["--proxy", PLAN["DIRECTOR"], "--user", "bob", "--password", "bob-secret",
               "--domain", "example.com", "--local", PLAN["IUSER"]]
    waiter = sipua("iuser", *in_args, "--wait-message")
    if not read_until(waiter, "REGISTER 200"):
        raise Fail(f"internal user's REGISTER at the Director: {finish(waiter)}")
    sender = sipua("client", *out_args, "--send-to", "bob", "--text", "hello from outside")
    out_s, out_w = finish(sender), finish(waiter)
    check("REGISTER 200" in out_s, f"external REGISTER through access-edge:\n{out_s}\n{logs('access-edge')}")
    check("MESSAGE 200" in out_s, f"external MESSAGE through access-edge:\n{out_s}\n{logs('access-edge')}")
    check("GOT hello from outside" in out_w, f"internal user got no MESSAGE:\n{out_w}")
    waiter = sipua("client", *out_args, "--wait-message")
    if not read_until(waiter, "REGISTER 200"):
        raise Fail(f"external REGISTER through access-edge: {finish(waiter)}")
    sender = sipua("iuser", *in_args, "--send-to", "alice", "--text", "hello from inside")
    out_s, out_w = finish(sender), finish(waiter)
    check("MESSAGE 200" in out_s, f"inside -> outside MESSAGE:\n{out_s}\n{logs('director')}")
    check("GOT hello from inside" in out_w, f"external user got no MESSAGE:\n{out_w}\n{logs('access-edge')}")
    return "alice (outside) <-> bob (inside): REGISTER 200, MESSAGE 200 both ways"


def director(method, path):
    rc, out = ex("iuser", "curl", "-sS", "-m", "5", "-X", method, "-w", "\n%{http_code}",
                 DIRECTOR_ADMIN + path, timeout=30)
    body, _, code = out.rpartition("\n")
    check(rc == 0 and code == "200", f"Director {method} {path}: rc {rc}: {out}")
    return json.loads(body)


def uclient(creds, peer, port, count):
    # -X: IPv4 relay; -c: RTP only; one client over UDP; -n messages of -l bytes.
    rc, out = ex("client", "turnutils_uclient", "-u", creds["username"], "-w", creds["password"],
                 "-e", peer, "-r", str(port), "-n", str(count), "-l", "120", "-m", "1", "-c", "-X",
                 PLAN["AV1_EXT"], timeout=60)
    return out


def flow_turn():
    """A TURN allocation with the Director's REST credentials (location internet); 20 packets to a
    peer beyond the perimeter (the firewall's perimeter address) and back, none lost; a relay
    toward the internal network is refused."""
    creds = director("GET", "/credentials?user=alice&location=internet")
    check(creds.get("username") and creds.get("password"), f"Director credentials: {creds}")
    peer = spawn("firewall", "turnutils_peer", "-L", FIREWALL_PERIM, "-p", "3480")
    try:
        time.sleep(0.5)
        out = uclient(creds, FIREWALL_PERIM, 3480, 20)
    finally:
        peer.kill()
        ex("firewall", "sh", "-c", "kill $(pidof turnutils_peer) 2>/dev/null; true")
    got = re.findall(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", out)
    check(got, f"turnutils_uclient did not finish:\n{out[-2000:]}\n{logs('av-edge')}")
    sent, recv = map(int, got[-1])
    check(sent > 0 and recv == sent and "Total lost packets 0 " in out,
          f"relay through av-edge lost packets ({sent} sent, {recv} back):\n{out[-2000:]}")
    out_in = uclient(creds, PLAN["IUSER"], 3480, 3)
    check(re.search(r"error 403|Forbidden", out_in), f"a relay into the internal network was not refused:\n"
                                                     f"{out_in[-1500:]}")
    return f"{sent} sent, {recv} back, 0 lost; relay to {PLAN['IUSER']} refused (403)"


def participant(key, mode, text, secs):
    return spawn("client", "python3", "-c", CONF_CLIENT, PLAN["CONF_EXT"], "443", CA, key, mode, text, str(secs))


def conf_result(p):
    out = finish(p, timeout=30)
    answer = re.search(r"^ANSWER (.*)$", out, re.M)
    got = re.search(r"^GOT (.*)$", out, re.M)
    return (answer.group(1) if answer else f"no answer: {out}"), (got.group(1) if got else None), out


def flow_conference():
    """Two participants of one conference exchange bytes through conf-edge and the Director's
    conferencing stub, each with a key from the Director; a third, of another conference, gets
    nothing; a forged key is refused."""
    end = time.time() + 20
    while not re.search(r"conferencing server \S+ connected", logs("conf-edge", 200)):
        check(time.time() < end, f"the Director's conferencing stub did not dial conf-edge:\n{logs('conf-edge')}")
        time.sleep(0.5)
    keys = {u: director("POST", f"/conference-keys?conf={c}&user={u}")["key"]
            for u, c in (("alice", "board"), ("bob", "board"), ("carol", "other"))}
    bob = participant(keys["bob"], "reply", "bytes-from-bob", 6)
    carol = participant(keys["carol"], "send", "bytes-from-carol", 6)
    for p in (bob, carol):
        read_until(p, "ANSWER", 8)
    alice = participant(keys["alice"], "send", "bytes-from-alice", 3.5)
    (a_ans, a_got, a_out), (b_ans, b_got, b_out), (c_ans, c_got, c_out) = (
        conf_result(alice), conf_result(bob), conf_result(carol))
    for who, ans in (("alice", a_ans), ("bob", b_ans), ("carol", c_ans)):
        check(ans == "PSOM-EDGE/1 200 admitted", f"{who}: {ans}\n{logs('conf-edge')}")
    check(b_got == "bytes-from-alice", f"bob: {b_out}")
    check(a_got == "bytes-from-bob", f"alice: {a_out}")
    check(c_got == "", f"a participant of another conference got: {c_out}")
    forged = keys["alice"][:-2] + ("AA" if not keys["alice"].endswith("AA") else "BB")
    f_ans, _, f_out = conf_result(participant(forged, "send", "sneaked-in", 2))
    check(f_ans == "PSOM-EDGE/1 403 invalid-key", f"forged key: {f_out}")
    return "alice <-> bob admitted with the Director's keys, bytes both ways; carol isolated; forged key 403"


def flow_address_book():
    """The address book through revproxy (TLS verified against the lab CA); an internal path that
    no route maps is not served."""
    with open(os.path.join(HERE, "web", "htdocs", "ABS", "int", "Files", "sample.lsabs")) as f:
        want = f.read()
    tls = ["--cacert", CA, "--resolve", f"revproxy:443:{PLAN['REVPROXY_EXT']}"]
    rc, body = ex("client", "curl", "-sS", "-m", "10", *tls, "https://revproxy/ABS/ext/Files/sample.lsabs")
    check(rc == 0 and body == want, f"address book through revproxy: rc {rc}: {body[:500]}\n{logs('revproxy')}")
    rc, code = ex("client", "curl", "-sS", "-m", "10", *tls, "-o", "/dev/null", "-w", "%{http_code}",
                  "https://revproxy/ABS/int/Files/sample.lsabs")
    check(rc == 0 and code != "200", f"revproxy served an internal path no route maps: {code}")
    return f"{len(want)} bytes, same as the web server's file; unmapped path {code}"


FLOWS = [("hardening", flow_hardening), ("perimeter", flow_perimeter), ("sip", flow_sip),
         ("turn", flow_turn), ("conference", flow_conference), ("address-book", flow_address_book)]


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "wait-healthy":
        try:
            wait_healthy()
        except Fail as e:
            print(f"flows: FAIL: {e}", file=sys.stderr)
            return 1
        return 0
    if cmd != "run":
        print(__doc__, file=sys.stderr)
        return 2
    only = sys.argv[2:]
    failed = []
    for name, fn in FLOWS:
        if only and name not in only:
            continue
        t0 = time.time()
        try:
            what = fn()
            print(f"flows: {name}: ok in {time.time() - t0:.1f} s: {what}", flush=True)
        except (Fail, subprocess.TimeoutExpired) as e:
            failed.append(name)
            print(f"flows: {name}: FAIL after {time.time() - t0:.1f} s: {e}", flush=True)
    count = os.environ.get("FLOWS_COUNT")  # compose-test's closing "N passed, N failed"
    if count:
        ran = sum(1 for name, _ in FLOWS if not only or name in only)
        with open(count, "w") as f:
            f.write(f"{ran - len(failed)} {len(failed)}\n")
    if failed:
        print(f"flows: failed: {' '.join(failed)}", file=sys.stderr)
        return 1
    print("flows: every flow passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
