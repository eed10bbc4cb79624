#!/bin/sh
# An on-complete hook for `dvdexit receive`: one line per complete study in a log file,
# with the sender's reason, recipient and note when the study carried them.
#
#   dvdexit receive --port 11112 --on-complete 'sh /etc/dvdexit/on-complete-note.sh /var/log/dvdexit-arrivals.log'
#   dvdexit receive --watch /srv/dropbox --on-complete 'sh /etc/dvdexit/on-complete-note.sh /var/log/dvdexit-arrivals.log'
#
# DVDEXIT_NOTE, DVDEXIT_REASON and DVDEXIT_RECIPIENT are untrusted text typed at the
# sending site: always quoted, never evaluated, newlines flattened.
set -eu
log="${1:?usage: on-complete-note.sh LOGFILE}"
flat() { printf '%s' "$1" | tr '\n\r\t' '   '; }
printf '%s study=%s instances=%s by=%s from=%s reason="%s" recipient="%s" note="%s"\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$DVDEXIT_STUDY_UID" "$DVDEXIT_INSTANCE_COUNT" \
    "$DVDEXIT_COMPLETED_BY" "$DVDEXIT_CALLING_AE" \
    "$(flat "${DVDEXIT_REASON:-}")" "$(flat "${DVDEXIT_RECIPIENT:-}")" \
    "$(flat "${DVDEXIT_NOTE:-}")" >> "$log"
