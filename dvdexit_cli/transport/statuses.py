"""C-STORE status codes (PS3.4 Annex B.2.3 and PS3.7 Annex C) and what they mean for an item."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StatusMeaning", "classify_store_status"]


@dataclass(frozen=True)
class StatusMeaning:
    category: str  # "success", "warning" or "failure"
    text: str
    retryable: bool = False


_KNOWN = {
    0x0000: StatusMeaning("success", "success"),
    0xB000: StatusMeaning("warning", "coercion of data elements"),
    0xB006: StatusMeaning("warning", "elements discarded"),
    0xB007: StatusMeaning("warning", "data set does not match SOP class"),
    0x0107: StatusMeaning("warning", "attribute list error"),
    0x0116: StatusMeaning("warning", "attribute value out of range"),
    0x0117: StatusMeaning("failure", "invalid object instance"),
    0x0122: StatusMeaning("failure", "SOP class not supported by the peer"),
    0x0124: StatusMeaning("failure", "refused: not authorised"),
    0x0210: StatusMeaning("failure", "duplicate invocation"),
    0x0211: StatusMeaning("failure", "unrecognised operation"),
    0x0212: StatusMeaning("failure", "mistyped argument"),
    0x0213: StatusMeaning("failure", "resource limitation at the peer", retryable=True),
}


def classify_store_status(code: int) -> StatusMeaning:
    """What a C-STORE response status means for the item, including ranges."""
    if code in _KNOWN:
        return _KNOWN[code]
    if 0xA700 <= code <= 0xA7FF:
        return StatusMeaning("failure", "out of resources at the peer", retryable=True)
    if 0xA900 <= code <= 0xA9FF:
        return StatusMeaning("failure", "data set does not match SOP class")
    if 0xC000 <= code <= 0xCFFF:
        return StatusMeaning("failure", "the peer cannot understand the data set")
    if 0xB000 <= code <= 0xBFFF:
        return StatusMeaning("warning", "warning")
    if code in (0xFF00, 0xFF01):
        return StatusMeaning("failure", "pending status is not valid for C-STORE")
    return StatusMeaning("failure", "unknown status")
