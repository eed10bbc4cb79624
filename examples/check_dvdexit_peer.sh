#!/bin/sh
# Nagios / Icinga / Zabbix check for one dvdexit peer, built on `dvdexit status --peer`.
#
#   check_dvdexit_peer.sh PEER [TIMEOUT_SECONDS]
#
# Prints one status line (with perfdata: milliseconds per stage) and exits with the
# monitoring convention: 0 OK, 2 CRITICAL (peer not healthy), 3 UNKNOWN (dvdexit itself
# failed: unknown peer, bad configuration). Needs python3 for the JSON parsing.
set -u
peer=${1:?usage: check_dvdexit_peer.sh PEER [TIMEOUT_SECONDS]}
timeout=${2:-10}

report=$(dvdexit status --peer "$peer" --json --timeout "$timeout" 2>/dev/null)
code=$?

case $code in
    0) state=OK; exit_with=0 ;;
    5) state=CRITICAL; exit_with=2 ;;
    *) echo "UNKNOWN - dvdexit status exited $code for peer $peer"; exit 3 ;;
esac

printf '%s' "$report" | python3 -c '
import json, sys
state = sys.argv[1]
r = json.load(sys.stdin)
failed = [s for s in r["stages"] if s["status"] == "failed"]
if failed:
    f = failed[0]
    text = "failed at %s: %s (hint: %s)" % (f["stage"], f["detail"], f["hint"])
else:
    text = "healthy"
perf = " ".join("%s_ms=%.1f" % (s["stage"], s["seconds"] * 1000)
                for s in r["stages"] if s["status"] != "skipped")
print("%s - dvdexit peer %s (%s) %s | %s" % (state, r["peer"], r["address"], text, perf))
' "$state"
exit $exit_with
