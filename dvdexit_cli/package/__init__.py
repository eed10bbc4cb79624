"""Transfer packages: an IHE PDI-style media tree with a DICOMDIR, plus a manifest."""

from dvdexit_cli.package.manifest import MANIFEST_DIGEST_NAME, MANIFEST_NAME, Manifest
from dvdexit_cli.package.verify import PackageCheck, verify_package
from dvdexit_cli.package.writer import write_package

__all__ = [
    "MANIFEST_DIGEST_NAME",
    "MANIFEST_NAME",
    "Manifest",
    "PackageCheck",
    "verify_package",
    "write_package",
]
