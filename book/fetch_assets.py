"""Fetch the pinned JavaScript the website serves itself, so no page loads a third-party host.

The built site needs four npm packages that Jupyter Book would otherwise pull from CDNs:

- ``mathjax`` (typesets the maths; ``mathjax_path`` in ``_config.yml`` points here),
- ``requirejs`` and ``@jupyter-widgets/html-manager`` (render saved ipywidgets state
  statically; ``nb_ipywidgets_js`` in ``_config.yml`` points here),
- ``thebe`` (turns code cells into live cells when a reader presses "Live Code";
  ``thebe_js_path`` in ``_config.yml`` points here, see ``book/_ext/bookext.py``).

Each package is fetched once with ``npm pack`` (the registry's own client), checked against
the pinned sha512 integrity, and unpacked into ``book/_vendor/<name>/`` (git-ignored).
A second run finds the files and does nothing.  Offline, it stops with a message that says
what is missing and how to provide it.

Usage: ``python book/fetch_assets.py [--check]``  (``--check`` only reports, fetches nothing).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

VENDOR_DIR = Path(__file__).resolve().parent / "_vendor"


@dataclass(frozen=True)
class NpmPackage:
    """One pinned npm package and the file inside it that proves it was unpacked."""

    name: str
    version: str
    integrity: str  # the registry's "dist.integrity" (sha512, base64)
    folder: str  # unpacked into VENDOR_DIR / folder
    marker: str  # a path relative to the folder that must exist afterwards

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


PACKAGES = (
    NpmPackage(
        "mathjax",
        "3.2.2",
        "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        "mathjax",
        "es5/tex-mml-chtml.js",
    ),
    NpmPackage(
        "requirejs",
        "2.3.8",
        "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
        "requirejs",
        "require.js",
    ),
    NpmPackage(
        "@jupyter-widgets/html-manager",
        "1.0.15",
        "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        "html-manager",
        "dist/embed-amd.js",
    ),
    # sphinx-thebe 0.3.1 was written for thebe 0.8.2, which the npm registry no longer serves;
    # 0.9.3 keeps the same global API (``thebelab.on``, ``thebelab.bootstrap``).
    NpmPackage(
        "thebe",
        "0.9.3",
        "sha512-Rb/7kVhtlffXra3kIe7OuIGE7awsm2/fGWxw21DiNfnWLnUQiDl9AWqYdshPwZPG/5DzLpsJRPix2xtCPtJmQQ==",
        "thebe",
        "lib/index.js",
    ),
)

# Only these parts of each tarball are served; the rest (sources, tests, node tooling) is not.
KEEP_PREFIXES = {
    "mathjax": ("es5/",),
    "requirejs": ("require.js",),
    "html-manager": ("dist/",),
    # lib/index.js loads its numbered chunks (lib/*.index.js) from its own folder.
    "thebe": ("lib/",),
}
# Source maps and type declarations are for developing the packages; the site does not need them.
SKIPPED_SUFFIXES = (".map", ".d.ts")


class FetchError(RuntimeError):
    """A package could not be fetched or verified."""


def is_present(package: NpmPackage) -> bool:
    return (VENDOR_DIR / package.folder / package.marker).is_file()


def sha512_integrity(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode("ascii")


def npm_pack(package: NpmPackage, workdir: Path) -> Path:
    """Download the package tarball with ``npm pack`` into ``workdir``; return its path."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(
            "npm is not installed, so the website's JavaScript cannot be fetched.\n"
            "Install it (Debian: apt-get install -y npm) or copy an existing book/_vendor/ here."
        )
    result = subprocess.run(
        [npm, "pack", package.spec, "--silent", "--pack-destination", str(workdir)],
        capture_output=True,
        text=True,
        check=False,
    )
    tarballs = sorted(workdir.glob("*.tgz"))
    if result.returncode != 0 or len(tarballs) != 1:
        raise FetchError(
            f"`npm pack {package.spec}` failed (exit {result.returncode}). Is the npm registry "
            "reachable? The book needs these files once; later builds reuse book/_vendor/.\n"
            f"npm said:\n{result.stderr.strip()}"
        )
    return tarballs[0]


def unpack(package: NpmPackage, tarball: Path) -> None:
    """Unpack the kept parts of ``tarball`` into VENDOR_DIR / folder (atomically)."""
    found = sha512_integrity(tarball)
    if found != package.integrity:
        raise FetchError(
            f"{package.spec}: integrity mismatch.\n  expected {package.integrity}\n"
            f"  found    {found}"
        )
    target = VENDOR_DIR / package.folder
    staging = VENDOR_DIR / f".{package.folder}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    keep = KEEP_PREFIXES[package.folder]
    with tarfile.open(tarball, "r:gz") as archive:
        members = []
        for member in archive.getmembers():
            # npm tarballs put every file under "package/".
            relative = member.name.partition("/")[2]
            if (member.isfile() and relative.startswith(keep)
                    and not relative.endswith(SKIPPED_SUFFIXES)):
                member.name = relative
                members.append(member)
        archive.extractall(staging, members=members, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    if not is_present(package):
        raise FetchError(f"{package.spec}: {package.marker} is missing from the tarball.")


def fetch_all(check_only: bool = False) -> list[NpmPackage]:
    """Fetch every missing package; return the ones that were (or, with check_only, are) missing."""
    missing = [package for package in PACKAGES if not is_present(package)]
    if check_only:
        return missing
    VENDOR_DIR.mkdir(parents=True, exist_ok=True)
    for package in missing:
        with tempfile.TemporaryDirectory() as workdir:
            unpack(package, npm_pack(package, Path(workdir)))
        print(f"fetched {package.spec} -> {(VENDOR_DIR / package.folder).as_posix()}")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report missing assets only")
    args = parser.parse_args(argv)
    try:
        missing = fetch_all(check_only=args.check)
    except FetchError as error:
        print(f"book/fetch_assets.py: {error}", file=sys.stderr)
        return 1
    if args.check and missing:
        print("missing: " + ", ".join(package.spec for package in missing), file=sys.stderr)
        return 1
    if not missing:
        print("book/_vendor/ is complete: " + ", ".join(p.spec for p in PACKAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
