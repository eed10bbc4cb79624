"""Transfer packages: an IHE PDI-style media tree with a DICOMDIR, plus a manifest."""

from dvdexit_cli.package.manifest import MANIFEST_DIGEST_NAME, MANIFEST_NAME, Manifest
from dvdexit_cli.package.verify import PackageCheck, is_package, verify_package
from dvdexit_cli.package.writer import write_package

__all__ = [
    "MANIFEST_DIGEST_NAME",
    "MANIFEST_NAME",
    "Manifest",
    "PackageCheck",
    "is_package",
    "verify_package",
    "write_package",
]
