"""book/fetch_assets.py: pinned, verified, cached and clear about failures (no network used)."""

import importlib.util
import io
import sys
import tarfile

import pytest

from .conftest import ROOT


@pytest.fixture
def fetch_assets(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("fetch_assets", ROOT / "book" / "fetch_assets.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fetch_assets", module)  # dataclasses look it up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "VENDOR_DIR", tmp_path / "_vendor")
    return module


def make_tarball(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_every_package_is_pinned_to_an_exact_version_and_hash(fetch_assets):
    for package in fetch_assets.PACKAGES:
        assert package.version.count(".") == 2 and package.version.replace(".", "").isdigit()
        assert package.integrity.startswith("sha512-")
        assert package.folder in fetch_assets.KEEP_PREFIXES


def test_unpack_keeps_only_the_served_files(fetch_assets, tmp_path):
    tarball = make_tarball(tmp_path / "r.tgz", {"require.js": b"// r", "bin/r.js": b"// cli"})
    package = fetch_assets.NpmPackage("requirejs", "1.0.0", fetch_assets.sha512_integrity(tarball),
                                      "requirejs", "require.js")
    fetch_assets.unpack(package, tarball)
    unpacked = sorted(p.name for p in (fetch_assets.VENDOR_DIR / "requirejs").rglob("*"))
    assert unpacked == ["require.js"]
    assert fetch_assets.is_present(package)


def test_unpack_rejects_a_tarball_with_the_wrong_hash(fetch_assets, tmp_path):
    tarball = make_tarball(tmp_path / "r.tgz", {"require.js": b"// tampered"})
    package = fetch_assets.NpmPackage("requirejs", "1.0.0", "sha512-AAAA", "requirejs",
                                      "require.js")
    with pytest.raises(fetch_assets.FetchError, match="integrity mismatch"):
        fetch_assets.unpack(package, tarball)
    assert not fetch_assets.is_present(package)


def test_without_npm_it_says_how_to_fix_it(fetch_assets, monkeypatch, capsys):
    monkeypatch.setattr(fetch_assets.shutil, "which", lambda name: None)
    assert fetch_assets.main([]) == 1
    assert "npm is not installed" in capsys.readouterr().err


def test_check_lists_missing_packages_and_fetches_nothing(fetch_assets, capsys):
    assert fetch_assets.main(["--check"]) == 1
    assert "missing: mathjax@3.2.2" in capsys.readouterr().err
    assert not fetch_assets.VENDOR_DIR.exists()


def test_present_packages_are_not_fetched_again(fetch_assets, monkeypatch):
    for package in fetch_assets.PACKAGES:
        marker = fetch_assets.VENDOR_DIR / package.folder / package.marker
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("// cached")
    monkeypatch.setattr(fetch_assets, "npm_pack", lambda *args: pytest.fail("fetched again"))
    assert fetch_assets.fetch_all() == []
