"""Import reconciliation (IHE IRWF.b style): the sender's Patient ID -> the local one.

The mapping is a CSV file (header ``sender_id,sender_issuer,local_id,local_issuer``;
issuers may be empty) or a TOML file (``[[patient]]`` tables with the same keys). A row
with an empty ``sender_issuer`` matches that ID from any issuer; a row naming an issuer
matches only that issuer, and wins over an issuer-less row.

A reconciled copy gets the local Patient ID and Issuer of Patient ID; the sender's ID
and issuer go into Other Patient IDs Sequence, and the replaced values into Original
Attributes Sequence (reason COERCE). UIDs never change. The stored instance is never
modified: reconciliation writes a copy for forwarding.
"""

from __future__ import annotations

import csv
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydicom.dataset import Dataset

from dvdexit_cli.errors import ConfigError

__all__ = ["PatientMapping", "load_mapping", "reconcile_dataset"]

_KEYS = ("sender_id", "sender_issuer", "local_id", "local_issuer")


@dataclass(frozen=True)
class LocalPatient:
    patient_id: str
    issuer: str


class PatientMapping:
    """Sender (Patient ID, issuer) -> local (Patient ID, issuer)."""

    def __init__(self, rows: dict[tuple[str, str], LocalPatient]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, patient_id: str, issuer: str) -> LocalPatient | None:
        return self._rows.get((patient_id, issuer)) or self._rows.get((patient_id, ""))


def load_mapping(path: Path) -> PatientMapping:
    """Read a CSV or TOML mapping; ConfigError naming the file and row when it is wrong."""
    try:
        if path.suffix.lower() == ".toml":
            with path.open("rb") as fh:
                table = tomllib.load(fh).get("patient", [])
            if not isinstance(table, list):
                raise ConfigError(f"{path}: 'patient' must be an array of tables ([[patient]])")
            records = [{k: str(row.get(k, "") or "") for k in _KEYS} for row in table]
        else:
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                missing = {"sender_id", "local_id"} - set(reader.fieldnames or ())
                if missing:
                    raise ConfigError(
                        f"{path}: the header must name {', '.join(_KEYS)}",
                        hint="first line: sender_id,sender_issuer,local_id,local_issuer",
                    )
                records = [{k: (row.get(k) or "").strip() for k in _KEYS} for row in reader]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read the reconciliation mapping {path}: {exc}") from exc
    rows: dict[tuple[str, str], LocalPatient] = {}
    for number, record in enumerate(records, start=1):
        if not record["sender_id"] or not record["local_id"]:
            raise ConfigError(f"{path}: entry {number} needs sender_id and local_id")
        key = (record["sender_id"], record["sender_issuer"])
        if key in rows:
            raise ConfigError(f"{path}: entry {number} maps the same sender ID twice")
        rows[key] = LocalPatient(record["local_id"], record["local_issuer"])
    return PatientMapping(rows)


def reconcile_dataset(ds: Dataset, local: LocalPatient, *, system: str = "DVDEXIT") -> None:
    """Give ``ds`` the local identity, keeping the sender's as PS3.3 describes."""
    original_id = str(ds.get("PatientID", "") or "")
    original_issuer = str(ds.get("IssuerOfPatientID", "") or "")

    modified = Dataset()
    modified.PatientID = original_id
    modified.IssuerOfPatientID = original_issuer
    change = Dataset()
    change.ModifiedAttributesSequence = [modified]
    change.AttributeModificationDateTime = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    change.ModifyingSystem = system
    change.SourceOfPreviousValues = original_issuer
    change.ReasonForTheAttributeModification = "COERCE"
    ds.OriginalAttributesSequence = [*ds.get("OriginalAttributesSequence", []), change]

    other = Dataset()
    other.PatientID = original_id
    other.IssuerOfPatientID = original_issuer
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [*ds.get("OtherPatientIDsSequence", []), other]

    ds.PatientID = local.patient_id
    if local.issuer:
        ds.IssuerOfPatientID = local.issuer
    elif "IssuerOfPatientID" in ds:
        del ds.IssuerOfPatientID
