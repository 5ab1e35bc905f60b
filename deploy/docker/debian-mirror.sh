#!/bin/sh
# Prints the Debian mirror this machine is configured with: the first bookworm (not -security)
# source of /etc/apt/sources.list or sources.list.d (one-line or deb822 format). Nothing, and
# exit 1, if there is none. Used by build-images.sh and compose-test.sh, so no script names a
# mirror of its own.
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { u = $i; s = $(i + 1); break }
         if (s == "bookworm" && u ~ /\/debian\/?$/) { sub(/\/$/, "", u); print u; exit } }' "$f"
done | head -1 | grep . && exit 0
for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
         { u = ""; s = ""; for (i = 1; i <= NF; i++) { if ($i ~ /^URIs:/) u = $i; if ($i ~ /^Suites:/) s = $i }
           sub(/^URIs: */, "", u); split(u, us, " ")
           if (s ~ /(^|[ :])bookworm( |$)/ && us[1] ~ /\/debian\/?$/) { sub(/\/$/, "", us[1]); print us[1]; exit } }' "$f"
done | head -1 | grep .
