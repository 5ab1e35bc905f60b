#!/usr/bin/python3
"""One WebRTC peer (aiortc) that may use only relayed candidates: an audio track and a data
channel through a TURN server, asserted from the peer's own counters. Run two of them, one with
--offer, and carry each one's single line of signalling to the other: the offerer prints
"OFFER <blob>", the answerer reads that line on stdin and prints "ANSWER <blob>", which the
offerer reads on stdin. Then both send for --seconds (silence from aiortc's audio source, Opus,
SRTP; a data channel message every 20 ms that the answerer echoes) and print one line:

  RESULT pair=relay/relay rtp_sent=.. rtp_received=.. lost=.. bytes_received=.. dc_sent=.. dc_received=..

(bytes_received: everything that came in on the ICE transport: DTLS, SRTP and SCTP.)

To check your own relay, e.g. behind two different NATs:
  /usr/bin/python3 aiortc_peer.py --offer --turn 'turn:relay.example.net:3478?transport=udp' \
      --username "$U" --password "$P"
  /usr/bin/python3 aiortc_peer.py --turn 'turns:relay.example.net:443?transport=tcp' --ca ca.pem ...
Needs Debian's python3-aiortc (1.4). aiortc has no iceTransportPolicy; relay-only is aioice's
TransportPolicy.RELAY, set below where aiortc makes its ICE connection."""
import argparse
import asyncio
import base64
import functools
import json
import ssl
import sys
import time

import aioice
import aiortc.rtcicetransport
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import AudioStreamTrack


def relay_only(ca):
    """aiortc passes its ICE servers to aioice.Connection; add the relay-only policy, and for
    turns: a TLS context that trusts CA (the lab's certificates name hosts, not addresses, so
    the chain is checked but not the name)."""
    make = aiortc.rtcicetransport.Connection

    def connection(**kw):
        if kw.get("turn_ssl") and ca:
            ctx = ssl.create_default_context(cafile=ca)
            ctx.check_hostname = False
            kw["turn_ssl"] = ctx
        return make(transport_policy=aioice.TransportPolicy.RELAY, **kw)
    aiortc.rtcicetransport.Connection = connection


def pack(desc):
    return base64.b64encode(json.dumps({"sdp": desc.sdp, "type": desc.type}).encode()).decode()


def unpack(line, want):
    word, _, blob = line.strip().partition(" ")
    if word != want:
        raise SystemExit(f"expected a line '{want} <blob>' on stdin, got {line.strip()[:40]!r}")
    return RTCSessionDescription(**json.loads(base64.b64decode(blob)))


async def read_line():
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def selected_pair(pc):
    """Types of the nominated ICE pair, local/remote, e.g. relay/relay."""
    for t in pc.getTransceivers():
        conn = t.receiver.transport.transport._connection
        for pair in conn._nominated.values():
            return f"{pair.local_candidate.type}/{pair.remote_candidate.type}"
    return "none"


async def run(a):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[
        RTCIceServer(urls=a.turn, username=a.username, credential=a.password)]))
    sink = MediaBlackhole()  # decodes and drops what arrives, so the receiver keeps reading
    dc_sent, dc_got, opened = 0, 0, asyncio.Event()

    @pc.on("track")
    def on_track(track):
        sink.addTrack(track)

    @pc.on("datachannel")
    def on_datachannel(ch):  # the answerer echoes every message back
        nonlocal dc_got

        @ch.on("message")
        def on_message(msg):
            nonlocal dc_got
            dc_got += 1
            ch.send(msg)

    pc.addTrack(AudioStreamTrack())
    if a.offer:
        ch = pc.createDataChannel("probe")

        @ch.on("open")
        def on_open():
            opened.set()

        @ch.on("message")
        def on_echo(msg):
            nonlocal dc_got
            dc_got += 1

        await pc.setLocalDescription(await pc.createOffer())  # gathers every candidate first
        print("OFFER", pack(pc.localDescription), flush=True)
        await pc.setRemoteDescription(unpack(await read_line(), "ANSWER"))
    else:
        await pc.setRemoteDescription(unpack(await read_line(), "OFFER"))
        await pc.setLocalDescription(await pc.createAnswer())
        print("ANSWER", pack(pc.localDescription), flush=True)
    await sink.start()

    end = time.monotonic() + a.timeout
    while pc.connectionState != "connected" and time.monotonic() < end:
        await asyncio.sleep(0.05)
    print("STATE", pc.connectionState, flush=True)
    if pc.connectionState == "connected":
        if a.offer:
            await asyncio.wait_for(opened.wait(), max(0.1, end - time.monotonic()))
        stop = time.monotonic() + a.seconds
        while time.monotonic() < stop:
            if a.offer:
                ch.send(f"ping {dc_sent}")
                dc_sent += 1
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # the last echoes and RTP in flight
    sent = got = lost = nbytes = 0
    for s in (await pc.getStats()).values():
        if s.type == "outbound-rtp":
            sent += s.packetsSent
        elif s.type == "inbound-rtp":
            got, lost = got + s.packetsReceived, lost + s.packetsLost
        elif s.type == "transport":  # everything received on the ICE transport: DTLS, SRTP, SCTP
            nbytes += s.bytesReceived
    pair = selected_pair(pc)
    await sink.stop()
    await pc.close()
    print(f"RESULT pair={pair} rtp_sent={sent} rtp_received={got} lost={lost} bytes_received={nbytes} "
          f"dc_sent={dc_sent} dc_received={dc_got}", flush=True)
    return 0 if pair != "none" else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--offer", action="store_true", help="make the offer and open the data channel")
    ap.add_argument("--turn", required=True, help="turn:HOST:PORT?transport=udp|tcp or turns:HOST:PORT?transport=tcp")
    ap.add_argument("--username", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--ca", help="CA file to verify a turns: server's certificate chain")
    ap.add_argument("--seconds", type=float, default=3, help="how long to send once connected")
    ap.add_argument("--timeout", type=float, default=20, help="how long to wait for ICE and DTLS")
    a = ap.parse_args()
    relay_only(a.ca)
    sys.exit(asyncio.run(run(a)))


if __name__ == "__main__":
    main()
