"""The README's second command on stock Debian 12: `.ci/install` from scratch in a clean debootstrap rootfs
(the container suite's base, cached by tests/containers/images.py), then one quick test through `.ci/run` with the venv it made.

Stock Debian's python3 is externally managed (PEP 668): `pip install` into it is refused, so .ci/install
must make its own venv (.venv). The rootfs runs as a chroot in private mount and PID namespaces (what it
mounts and whatever its packages start end with it); package scripts are told not to start services
(policy-rc.d, as in Debian's container images). Network: the host's (Debian's mirror and PyPI, as in CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from tests.containers import images
from tests.prereq import require

REPO = images.REPO


def _prerequisite_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (chroot, mount namespaces)"
    missing = [t for t in ("debootstrap", "unshare", "chroot", "git") if not shutil.which(t)]
    return f"{', '.join(missing)} not installed (.ci/install)" if missing else None


def test_ci_install_on_a_clean_debian_rootfs(tmp_path: Path) -> None:
    reason = _prerequisite_missing()
    require(reason, "the stock Debian install test")
    root = tmp_path / "rootfs"
    root.mkdir()
    with tarfile.open(images.rootfs_tar()) as tar:
        tar.extractall(root, filter="fully_trusted")
    assert subprocess.run(["chroot", str(root), "python3", "-m", "pip", "--version"], capture_output=True,
                          check=False).returncode != 0, "stock Debian has no pip for its python3: the premise"
    # the project as committed (a fresh clone has no .venv, no build output)
    src = root / "src"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    for f in filter(None, files):
        p = REPO / os.fsdecode(f)
        if p.is_file():
            (src / os.fsdecode(f)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, src / os.fsdecode(f))
    (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
    (root / "usr/sbin/policy-rc.d").chmod(0o755)
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    ca = ""
    if images.HOST_CA.exists():   # TLS to the package index may be intercepted here: the host's CA bundle
        shutil.copy(images.HOST_CA, root / "root/host-ca.crt")
        ca = "PIP_CERT=/root/host-ca.crt"
    # a clean environment (none of this machine's pip settings), as on a stock machine
    # .ci/run = .ci/install, then pytest with the venv (its commands first on PATH)
    inner = "cd /src && FEPHA_NO_CONTAINERS=1 .ci/run -q -p no:cacheprovider tests/foundation/test_config.py"
    script = (f"set -e; R={root}; mount --bind /dev $R/dev; mount -t proc proc $R/proc; "
              f"mount -t sysfs sys $R/sys; exec chroot $R /usr/bin/env -i HOME=/root LANG=C.UTF-8 {ca} "
              f"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/bash -c '{inner}'")
    r = subprocess.run(["unshare", "--mount", "--pid", "--fork", "bash", "-c", script], capture_output=True,
                       text=True, timeout=1500, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert " passed" in r.stdout.splitlines()[-1], r.stdout[-2000:]
    assert (src / ".venv/bin/python").exists()
