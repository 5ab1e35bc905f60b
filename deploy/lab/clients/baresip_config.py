#!/usr/bin/env python3
"""Writes a baresip 1.0 (Debian baresip-core) configuration directory for a headless softphone:
no sound card (a 440 Hz tone as the microphone, a WAV file as the speaker), SRTP (SDES) required,
ICE with a TURN server (or --medianat turn: always relay; libre 1.x's ICE, as the callee, fails
its checks now and then behind a NAT), the call summary with RTP counters printed at hang-up,
and one account.
Run baresip on it with SIP trace on to see every request:

  ./baresip_config.py --dir ~/.bs --aor sip:alice@example.com --password alice-secret \
      --outbound 'sip:edge.example.com:443;transport=tls' --ca ca.crt \
      --turn turn:relay.example.com:3478 --turn-user "$U" --turn-password "$P" \
      --contact sip:bob@example.com
  baresip -f ~/.bs -s -e '>' -e '/message hello' -e '/dialcontact' -t 20

'>' selects the next (first) contact; '/message TEXT' sends it a MESSAGE, '/dialcontact' calls
it. At hang-up baresip prints "packets: <sent> <received>" and "lost:" for the audio stream."""
import argparse
import os

CONFIG = """\
poll_method		epoll
sip_listen		{listen}
sip_cafile		{ca}
audio_source		ausine,440
audio_player		aufile,{dir}/speaker.wav
audio_alert		aufile,{dir}/alert.wav
ausrc_srate		48000
auplay_srate		48000
ausrc_channels		2
auplay_channels		2
rtp_stats		yes
rtcp_mux		yes
module_path		/usr/lib/baresip/modules
module			g711.so
module			ausine.so
module			aufile.so
module			stun.so
module			turn.so
module			ice.so
module			srtp.so
module_app		account.so
module_app		contact.so
module_app		menu.so
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--aor", required=True, help="sip:user@domain")
    ap.add_argument("--password", required=True)
    ap.add_argument("--outbound", help="the proxy: sip:HOST:PORT;transport=udp|tcp|tls (default: the "
                    "AOR's domain)")
    ap.add_argument("--listen", default="0.0.0.0:0", help="local SIP address (default: any, any port)")
    ap.add_argument("--ca", default="", help="CA file to check the proxy's TLS certificate")
    ap.add_argument("--turn", required=True, help="turn:HOST:PORT")
    ap.add_argument("--turn-user", required=True)
    ap.add_argument("--turn-password", required=True)
    ap.add_argument("--medianat", default="ice", choices=("ice", "turn"),
                    help="ice: gather host, server-reflexive and relayed candidates; turn: always relay")
    ap.add_argument("--contact", action="append", default=[], help="a contact's URI (repeat)")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    with open(os.path.join(a.dir, "config"), "w") as f:
        f.write(CONFIG.format(listen=a.listen, ca=a.ca, dir=a.dir))
    # ICE gathers host, server-reflexive and relayed candidates from the TURN server; SRTP
    # keys go in the SDP (SDES), which only a TLS hop to the proxy keeps secret.
    with open(os.path.join(a.dir, "accounts"), "w") as f:
        outbound = f';outbound="{a.outbound}"' if a.outbound else ""
        f.write(f'<{a.aor}>;auth_pass={a.password}{outbound};regint=300;'
                f'answermode=auto;mediaenc=srtp-mand;medianat={a.medianat};stunserver="{a.turn}";'
                f'stunuser={a.turn_user};stunpass={a.turn_password}\n')
    with open(os.path.join(a.dir, "contacts"), "w") as f:
        for uri in a.contact:
            f.write(f'"{uri.split(":", 1)[1].split("@")[0]}" <{uri}>\n')


if __name__ == "__main__":
    main()
