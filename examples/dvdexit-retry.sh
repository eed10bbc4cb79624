#!/bin/sh
# Replay what earlier sends left failed, for cron: silent when everything arrived.
#
# Prints (so cron mails it) only when something is still failing, with the JSON result
# saved next to the journal. Extra arguments go to `dvdexit send --retry-failed`
# (--to PEER, --older-than 30m, --max-attempts N). Exit code: dvdexit's own (0, 5, 6, ...).
# Set DVDEXIT_RETRY_LOG to a file to append one line per run there as well.
set -u

DVDEXIT=${DVDEXIT:-dvdexit}
state_dir=${DVDEXIT_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/dvdexit}
mkdir -p "$state_dir"
result="$state_dir/last-retry.json"
errors="$state_dir/last-retry.stderr"

"$DVDEXIT" send --retry-failed --json "$@" >"$result" 2>"$errors"
code=$?

summary=$(python3 - "$result" <<'PY' 2>/dev/null
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    sys.exit(0)
if "error" in doc:
    print(f"error: {doc['error'].get('message')}")
else:
    print(f"outcome={doc.get('outcome')} claimed={doc.get('claimed')} sent={doc.get('sent')} "
          f"failed={doc.get('failed')} not_sent={doc.get('not_sent')} "
          f"given_up={doc.get('given_up')}")
PY
)

if [ -n "${DVDEXIT_RETRY_LOG:-}" ]; then
    printf '%s exit=%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$code" "$summary" >>"$DVDEXIT_RETRY_LOG"
fi

if [ "$code" -ne 0 ]; then
    echo "dvdexit send --retry-failed exited $code: $summary"
    echo "details: $result (JSON), $errors; 'dvdexit status' lists the failed items"
    echo "items that can never be sent: dvdexit send --abandon --to PEER --reason TEXT"
    tail -n 20 "$errors"
fi
exit "$code"
